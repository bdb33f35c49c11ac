// Status lines: every RPC outcome is written to an <output> element with a data-state the tests (and the CSS)
// key on: "busy", "ok", "error" or "unimplemented". Server errors are never swallowed: they are shown as
// "<connect code>: <message>", the way the Connect protocol spells codes on the wire.

import { Code, ConnectError } from "@connectrpc/connect";

export type State = "busy" | "ok" | "error" | "unimplemented";

/** codeName returns the Connect protocol's name for code, for example "invalid_argument". */
export function codeName(code: Code): string {
  const name = Code[code] ?? "unknown";
  return name.replace(/[A-Z]/g, (c, i: number) => (i > 0 ? "_" : "") + c.toLowerCase());
}

/** describe turns any thrown value into a state and a message for a status line. */
export function describe(err: unknown): { state: State; text: string } {
  const ce = ConnectError.from(err);
  if (ce.code === Code.Unimplemented) {
    return { state: "unimplemented", text: `not built yet (unimplemented: ${ce.rawMessage})` };
  }
  return { state: "error", text: `${codeName(ce.code)}: ${ce.rawMessage}` };
}

/** show sets a status line. */
export function show(el: HTMLElement, state: State, text: string): void {
  el.dataset.state = state;
  el.textContent = text;
}

/** showError sets a status line from a thrown value and logs it for the developer console. */
export function showError(el: HTMLElement, err: unknown): void {
  const { state, text } = describe(err);
  show(el, state, text);
  console.warn(text);
}

/** byTestId returns the element with data-testid id, failing loudly when the page and the code disagree. */
export function byTestId<T extends HTMLElement = HTMLElement>(id: string, root: ParentNode = document): T {
  const el = root.querySelector<T>(`[data-testid="${id}"]`);
  if (!el) {
    throw new Error(`console: no element with data-testid="${id}"`);
  }
  return el;
}

/** item returns an <li> with text and a data-testid. */
export function item(testId: string, text: string): HTMLLIElement {
  const li = document.createElement("li");
  li.dataset.testid = testId;
  li.textContent = text;
  return li;
}

/** field returns a named form control's trimmed value. */
export function field(form: HTMLFormElement, name: string): string {
  const el = form.elements.namedItem(name) as HTMLInputElement | HTMLTextAreaElement | HTMLSelectElement | null;
  return el ? el.value.trim() : "";
}

/** onSubmit runs handler for form submissions, with the submit button disabled while it runs. */
export function onSubmit(form: HTMLFormElement, handler: () => Promise<void>): void {
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const buttons = form.querySelectorAll<HTMLButtonElement>("button[type=submit]");
    buttons.forEach((b) => (b.disabled = true));
    void handler().finally(() => buttons.forEach((b) => (b.disabled = false)));
  });
}
