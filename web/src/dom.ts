// A tiny hyperscript helper and the status-line conventions every view shares. No framework: the console is a
// few forms, lists and one SVG per view, and building them with h() keeps the bundle to the Connect and protobuf
// runtimes plus the generated code.

export type Child = Node | string | number | bigint | false | null | undefined | Child[];
export type Attrs = Record<string, string | number | boolean | EventListener | null | undefined>;

/** h creates an element. Attributes starting with "on" add listeners; false or null attributes are omitted. */
export function h<K extends keyof HTMLElementTagNameMap>(tag: K, attrs?: Attrs | null, ...children: Child[]): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

const SVG_NS = "http://www.w3.org/2000/svg";

/** s creates an SVG element. */
export function s(tag: string, attrs?: Attrs | null, ...children: Child[]): SVGElement {
  const el = document.createElementNS(SVG_NS, tag) as SVGElement;
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

function setAttrs(el: Element, attrs?: Attrs | null): void {
  if (!attrs) return;
  for (const [k, v] of Object.entries(attrs)) {
    if (v === false || v === null || v === undefined) continue;
    if (k.startsWith("on") && typeof v === "function") {
      el.addEventListener(k.slice(2), v);
    } else if (k === "value" && (el instanceof HTMLInputElement || el instanceof HTMLTextAreaElement || el instanceof HTMLSelectElement)) {
      el.value = String(v);
    } else if (k === "checked" && el instanceof HTMLInputElement) {
      el.checked = Boolean(v);
    } else {
      el.setAttribute(k, v === true ? "" : String(v));
    }
  }
}

export function append(el: Element, children: Child[]): void {
  for (const c of children) {
    if (c === false || c === null || c === undefined) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : String(c));
  }
}

/** State of a status line: the tests and the CSS key on it. */
export type State = "busy" | "ok" | "error" | "unimplemented" | "";

/** status returns an <output> status line (a polite live region) with a test id. */
export function status(testId: string): HTMLOutputElement {
  return h("output", { class: "status", "data-testid": testId, "aria-live": "polite" });
}

/** show sets a status line. */
export function show(el: HTMLElement, state: State, text: string): void {
  el.dataset.state = state;
  el.textContent = text;
}

/** field returns a named form control's trimmed value. */
export function field(form: HTMLFormElement, name: string): string {
  const el = form.elements.namedItem(name) as HTMLInputElement | HTMLTextAreaElement | HTMLSelectElement | null;
  return el ? el.value.trim() : "";
}

/** checked reports whether a named checkbox is ticked. */
export function checked(form: HTMLFormElement, name: string): boolean {
  const el = form.elements.namedItem(name) as HTMLInputElement | null;
  return !!el?.checked;
}

/** onSubmit runs handler for form submissions, with the submit buttons disabled while it runs. */
export function onSubmit(form: HTMLFormElement, handler: (submitter: HTMLElement | null) => Promise<void>): void {
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const buttons = form.querySelectorAll<HTMLButtonElement>("button[type=submit]");
    buttons.forEach((b) => (b.disabled = true));
    void handler((ev as SubmitEvent).submitter ?? null).finally(() => buttons.forEach((b) => (b.disabled = false)));
  });
}

/** select returns a <select> with options [value, text]. */
export function select(attrs: Attrs, options: [string, string][], selected?: string): HTMLSelectElement {
  const el = h("select", attrs, ...options.map(([v, t]) => h("option", { value: v }, t)));
  if (selected !== undefined) el.value = selected;
  return el;
}

/** empty is what an empty list says: what there is not, and what to do next. */
export function empty(testId: string, text: string): HTMLElement {
  return h("p", { class: "empty", "data-testid": testId }, text);
}

/** fmtTime formats a protobuf Timestamp for people. */
export function fmtTime(t?: { seconds: bigint; nanos: number }): string {
  if (!t) return "";
  return new Date(Number(t.seconds) * 1000 + Math.floor(t.nanos / 1e6)).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

/** fmtMs formats a duration in milliseconds for people. */
export function fmtMs(ms: number): string {
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(ms < 10_000 ? 2 : 1)} s`;
}

/** json pretty-prints a value. */
export function json(v: unknown): string {
  return JSON.stringify(v, (_, x) => (typeof x === "bigint" ? x.toString() : x), 2);
}

/** byTestId returns the element with data-testid id under root, or null. */
export function byTestId<T extends HTMLElement = HTMLElement>(id: string, root: ParentNode = document): T | null {
  return root.querySelector<T>(`[data-testid="${id}"]`);
}

/** fill replaces an element's children (null and false children are skipped). */
export function fill(el: Element, ...children: Child[]): void {
  el.replaceChildren();
  append(el, children);
}
