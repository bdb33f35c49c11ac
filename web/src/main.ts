// The Loom console: a single page on Connect-Web, routed by the URL's hash (#/blueprints, #/runs/<id>, ...).

import { newApp, type App, type View } from "./app";
import { adminView } from "./admin";
import { agentsView } from "./agents";
import { blueprintsView } from "./blueprints";
import { h, show, status, byTestId } from "./dom";
import { memoryView } from "./memory";
import { approvalsView, runsView } from "./runs";
import { newSession } from "./session";

const ROUTES: { path: string; title: string; view: View; role?: "admin" }[] = [
  { path: "blueprints", title: "Blueprints", view: blueprintsView },
  { path: "runs", title: "Runs", view: runsView },
  { path: "approvals", title: "Approvals", view: approvalsView },
  { path: "agents", title: "Agents", view: agentsView },
  { path: "memory", title: "Memory", view: memoryView },
  { path: "admin", title: "Admin", view: adminView, role: "admin" },
];

function renderNav(app: App, nav: HTMLElement, current: string): void {
  nav.replaceChildren(
    h("ul", null, ...ROUTES.filter((r) => !r.role || app.can(r.role)).map((r) =>
      h("li", null, h("a", { href: `#/${r.path}`, "data-testid": `nav-${r.path}`, "aria-current": r.path === current ? "page" : false }, r.title)),
    )),
  );
}

function renderSession(app: App, box: HTMLElement): void {
  const s = app.session;
  const id = s.identity;
  const who = h("span", { class: "whoami", "data-testid": "whoami", "data-kind": id.kind, "data-tenant": id.tenant, "data-roles": id.roles.join(",") },
    id.kind === "none"
      ? h("span", null, "Not signed in")
      : [
          h("span", null, "tenant ", h("b", { "data-testid": "whoami-tenant" }, id.tenant || "(not reported)")),
          " · ",
          h("span", null, "roles ", h("b", { "data-testid": "whoami-roles" }, id.roles.join(", ") || "none")),
          id.kind === "local" ? h("span", { class: "badge", "data-testid": "local-mode" }, "local mode") : null,
        ],
  );
  const note = h("p", { class: "note", "data-testid": "whoami-note" }, id.note);
  const st = status("signin-status");
  const form = h("form", { class: "signin", "data-testid": "signin-form" },
    h("label", null, h("span", { class: "lbl" }, "API key or OIDC token"),
      h("input", { type: "password", name: "credential", autocomplete: "off", "data-testid": "signin-credential", placeholder: "loom_… or eyJ…" })),
    h("button", { type: "submit", "data-testid": "signin-submit" }, "Sign in"),
  );
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const c = (form.elements.namedItem("credential") as HTMLInputElement).value.trim();
    if (!c) return show(st, "error", "Paste an API key or token first.");
    show(st, "busy", "checking…");
    void s.signIn(c);
  });
  const out = h("button", { type: "button", "data-testid": "signout", onclick: () => void s.signOut() }, "Sign out");
  box.replaceChildren(
    h("details", { class: "session", open: id.kind === "none" },
      h("summary", null, who),
      note,
      id.kind !== "none" && s.credential() ? out : form,
      st,
    ),
  );
}

/** focusHeading focuses root's first h2 now or as soon as it is added, until signal aborts. */
function focusHeading(root: HTMLElement, signal: AbortSignal): void {
  const focus = () => {
    const h2 = root.querySelector<HTMLElement>("h2");
    if (!h2) return false;
    // Only if focus is still where navigation left it (nowhere in the view yet), not where the user has put it.
    if (!root.contains(document.activeElement) || document.activeElement === root) h2.focus({ preventScroll: true });
    return true;
  };
  const obs: MutationObserver = new MutationObserver(() => focus() && obs.disconnect());
  obs.observe(root, { childList: true, subtree: true });
  signal.addEventListener("abort", () => obs.disconnect());
}

async function main(): Promise<void> {
  const session = await newSession();
  const app = newApp(session);
  const nav = document.getElementById("nav")!;
  const sess = document.getElementById("session")!;
  const root = document.getElementById("view")!;
  let ctrl = new AbortController();

  let first = true;
  const route = () => {
    ctrl.abort();
    ctrl = new AbortController();
    const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent).filter(Boolean);
    const r = ROUTES.find((x) => x.path === parts[0]) ?? ROUTES[0];
    renderNav(app, nav, r.path);
    renderSession(app, sess);
    root.replaceChildren();
    root.dataset.view = r.path;
    document.title = `${r.title} · Loom console`;
    if (session.identity.kind === "none") {
      root.append(h("section", { class: "panel" }, h("h2", { tabindex: -1 }, r.title),
        h("p", { class: "empty", "data-testid": "signin-needed" }, session.identity.note || "Sign in with an API key or token to use the console.")));
      if (!first) byTestId<HTMLInputElement>("signin-credential")?.focus();
      first = false;
      return;
    }
    // After navigating, move focus to the view's heading so keyboard and screen-reader users land on it; on the
    // first load leave it at the top, where the skip link is. Views that load before drawing add the heading
    // later: focus it when it appears, unless the user has moved on.
    if (!first) focusHeading(root, ctrl.signal);
    void r.view(app, root, parts.slice(1), ctrl.signal);
    first = false;
  };
  session.onChange(route);
  window.addEventListener("hashchange", route);
  route();
  document.getElementById("app-ready")!.hidden = false;
  document.body.dataset.ready = "true";
}

void main();
