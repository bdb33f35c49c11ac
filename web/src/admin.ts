// Admin (admin role): API keys (create, shown once; list; revoke), the audit trail (filtered in the page: the RPC
// has no filters), and the tenant's provider keys (set and delete; never shown).

import type { App, View } from "./app";
import { empty, field, fmtTime, h, onSubmit, select, show, status } from "./dom";
import { clearFieldErrors, showError } from "./errors";

export const adminView: View = async (app, root) => {
  root.append(h("section", { class: "panel" }, h("h2", { tabindex: -1 }, "Admin"),
    h("p", { class: "note" }, `Tenant ${app.session.identity.tenant || "(unknown)"}: its API keys, its own provider keys and its audit trail.`)));
  if (!app.can("admin")) {
    root.append(h("p", { class: "note", "data-testid": "readonly-note" }, "Only admins manage keys and read the audit trail."));
    return;
  }
  root.append(keys(app), providerKeys(app), audit(app));
};

function keys(app: App): HTMLElement {
  const st = status("keys-status");
  const body = h("div", { "data-testid": "keys" });
  const secret = h("div", { "data-testid": "key-secret-box", "aria-live": "polite" });
  const load = async () => {
    try {
      const res = await app.admin.listApiKeys({});
      body.replaceChildren(res.keys.length ? h("table", { class: "table" },
        h("thead", null, h("tr", null, ...["Id", "Name", "Roles", "Created", "Expires", "State", ""].map((t) => h("th", null, t)))),
        h("tbody", null, ...res.keys.map((k) => h("tr", { "data-testid": "key-row", "data-id": k.id },
          h("td", null, h("code", null, k.id)), h("td", null, k.name), h("td", null, k.roles.join(", ")), h("td", null, fmtTime(k.createTime)),
          h("td", null, fmtTime(k.expireTime) || "never"), h("td", null, k.revokeTime ? `revoked ${fmtTime(k.revokeTime)}` : "active"),
          h("td", null, k.revokeTime ? "" : h("button", { type: "button", class: "danger", onclick: async () => {
            if (!confirm(`Revoke key ${k.name} (${k.id}) now?`)) return;
            try {
              await app.admin.revokeApiKey({ id: k.id });
              await load();
            } catch (err) {
              showError(st, err);
            }
          } }, "Revoke")))))) : empty("keys-empty", "No API keys yet. Create one below."));
    } catch (err) {
      showError(st, err);
    }
  };
  const form = h("form", { "data-testid": "key-form" },
    h("h4", null, "New key"),
    h("label", null, h("span", { class: "lbl" }, "Name"), h("input", { name: "name", required: true, "data-field": "name" })),
    h("label", null, h("span", { class: "lbl" }, "Role"), select({ name: "role", "data-field": "roles" }, [["reader", "reader"], ["writer", "writer"], ["admin", "admin"]])),
    h("label", null, h("span", { class: "lbl" }, "Expires in days (empty: never)"), h("input", { name: "days", type: "number", min: 1, "data-field": "expire_time" })),
    h("button", { type: "submit" }, "Create key"), st);
  onSubmit(form, async () => {
    clearFieldErrors(form);
    try {
      const days = Number(field(form, "days") || 0);
      const exp = days ? { seconds: BigInt(Math.floor(Date.now() / 1000) + days * 86400), nanos: 0 } : undefined;
      const res = await app.admin.createApiKey({ name: field(form, "name"), roles: [field(form, "role")], expireTime: exp });
      secret.replaceChildren(h("p", { class: "note" }, "Copy the secret now: it is shown only once."), h("code", { class: "secret", "data-testid": "key-secret" }, res.secret));
      show(st, "ok", `created ${res.key!.id}`);
      await load();
    } catch (err) {
      showError(st, err, form);
    }
  });
  void load();
  return h("section", { class: "panel", "aria-labelledby": "keys-h" }, h("h3", { id: "keys-h" }, "API keys"), body, form, secret);
}

function providerKeys(app: App): HTMLElement {
  const st = status("pk-status");
  const body = h("div");
  const load = async () => {
    try {
      const res = await app.admin.listProviderKeys({});
      body.replaceChildren(res.providerKeys.length ? h("ul", { class: "items" }, ...res.providerKeys.map((k) => h("li", { "data-testid": "pk-row", "data-provider": k.provider }, `${k.provider} (set ${fmtTime(k.updateTime)}) `,
        h("button", { type: "button", class: "danger", "aria-label": `Delete the ${k.provider} key`, onclick: async () => {
          if (!confirm(`Delete the tenant's ${k.provider} key? Runs then use the server's key, if it has one.`)) return;
          try {
            await app.admin.deleteProviderKey({ provider: k.provider });
            await load();
          } catch (err) {
            showError(st, err);
          }
        } }, "Delete")))) : empty("pk-empty", "No provider keys: runs use the server's keys. Set one below."));
    } catch (err) {
      showError(st, err);
    }
  };
  const form = h("form", { "data-testid": "pk-form" },
    h("h4", null, "Set a key"),
    h("label", null, h("span", { class: "lbl" }, "Provider"), select({ name: "provider", "data-field": "provider", "data-testid": "pk-provider" }, ["gemini", "openai", "elevenlabs", "tavus"].map((p) => [p, p]))),
    h("label", null, h("span", { class: "lbl" }, "Key (write-only)"), h("input", { name: "key", type: "password", autocomplete: "off", required: true, "data-field": "key", "data-testid": "pk-key" })),
    h("button", { type: "submit", "data-testid": "pk-set" }, "Set key"), st);
  onSubmit(form, async () => {
    clearFieldErrors(form);
    try {
      await app.admin.setProviderKey({ provider: field(form, "provider"), key: field(form, "key") });
      (form.elements.namedItem("key") as HTMLInputElement).value = "";
      show(st, "ok", "stored");
      await load();
    } catch (err) {
      showError(st, err, form);
    }
  });
  void load();
  return h("section", { class: "panel", "aria-labelledby": "pk-h" }, h("h3", { id: "pk-h" }, "Provider keys"), body, form);
}

/** service names the service of a procedure such as "/loom.memory.v1.MemoryService/Upsert" ("memory"). */
function service(procedure: string): string {
  return /^\/loom\.([a-z]+)\.v\d/.exec(procedure)?.[1] ?? "other";
}

/**
 * audit is the audit trail, newest first, a page of 200 events at a time, with filters by subject, service,
 * result and free text. ListAuditEvents has no filters of its own, so they apply to the page shown and say so.
 */
function audit(app: App): HTMLElement {
  const st = status("audit-status");
  const body = h("div", { "data-testid": "audit" });
  const PAGE_SIZE = 200;
  const subject = select({ name: "subject", "data-testid": "audit-subject" }, [["", "anyone"]]);
  const svc = select({ name: "service", "data-testid": "audit-service" },
    [["", "any service"], ...["memory", "agent", "orchestrator", "admin"].map((x) => [x, x] as [string, string])]);
  const result = select({ name: "result", "data-testid": "audit-result" }, [["", "any result"], ["ok", "ok"], ["error", "errors only"]]);
  const text = h("input", { type: "search", name: "q", "data-testid": "audit-text", placeholder: "procedure, resource or code" });
  const filters = h("form", { class: "filter-row", "data-testid": "audit-filters", role: "search", "aria-label": "filter the audit trail" },
    h("label", null, h("span", { class: "lbl" }, "Subject"), subject),
    h("label", null, h("span", { class: "lbl" }, "Service"), svc),
    h("label", null, h("span", { class: "lbl" }, "Result"), result),
    h("label", null, h("span", { class: "lbl" }, "Contains"), text));
  filters.addEventListener("submit", (ev) => ev.preventDefault());
  const tokens = [""];
  let events: Awaited<ReturnType<typeof app.admin.listAuditEvents>>["events"] = [];
  const render = () => {
    const q = text.value.trim().toLowerCase();
    const shown = events.filter((e) =>
      (!subject.value || e.subject === subject.value) &&
      (!svc.value || service(e.procedure) === svc.value) &&
      (!result.value || (result.value === "ok" ? e.result === "ok" : e.result !== "ok")) &&
      (!q || [e.procedure, e.resource, e.result].some((x) => x.toLowerCase().includes(q))));
    body.replaceChildren(shown.length ? h("table", { class: "table" },
      h("thead", null, h("tr", null, ...["Time", "Subject", "Procedure", "Resource", "Result"].map((t) => h("th", null, t)))),
      h("tbody", null, ...shown.map((e) => h("tr", { "data-testid": "audit-row", "data-result": e.result },
        h("td", null, fmtTime(e.time)), h("td", null, e.subject), h("td", null, e.procedure.replace(/^\/loom\./, "")), h("td", null, e.resource),
        h("td", { class: e.result === "ok" ? "" : "error-text" }, e.result)))))
      : empty("audit-empty", events.length ? "No events on this page match: clear a filter or look at older events." : "No audit events yet: every call that changes something is recorded here."));
    return shown.length;
  };
  const load = async (page: number) => {
    show(st, "busy", "loading…");
    try {
      const res = await app.admin.listAuditEvents({ pageSize: PAGE_SIZE, pageToken: tokens[page] });
      tokens[page + 1] = res.nextPageToken;
      events = res.events;
      const keep = subject.value;
      const subjects = [...new Set(events.map((e) => e.subject))].sort();
      subject.replaceChildren(h("option", { value: "" }, "anyone"), ...subjects.map((x) => h("option", { value: x }, x)));
      subject.value = subjects.includes(keep) ? keep : "";
      const n = render();
      nav.replaceChildren(
        page > 0 ? h("button", { type: "button", onclick: () => void load(page - 1) }, "Newer") : "",
        res.nextPageToken ? h("button", { type: "button", "data-testid": "audit-older", onclick: () => void load(page + 1) }, "Older") : "");
      show(st, "ok", `${res.events.length} event(s) on this page${n !== res.events.length ? `, ${n} shown` : ""}`);
    } catch (err) {
      showError(st, err);
    }
  };
  const nav = h("div", { class: "row" });
  const refilter = () => {
    const n = render();
    show(st, "ok", `${events.length} event(s) on this page${n !== events.length ? `, ${n} shown` : ""}`);
  };
  for (const c of [subject, svc, result]) c.addEventListener("change", refilter);
  text.addEventListener("input", refilter);
  void load(0);
  return h("section", { class: "panel", "aria-labelledby": "audit-h" }, h("h3", { id: "audit-h" }, "Audit trail"),
    h("p", { class: "note" }, "Filters apply to the page shown (the newest 200 events, or older ones with Older)."),
    filters, body, nav, st);
}
