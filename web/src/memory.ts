// Memory: namespaces (create with dimension, metric, index kind and embedder; delete), upsert text or JSON
// records with metadata, search with a filter builder, hybrid on or off and a minimum score, and a record's
// detail and delete.

import type { MessageInitShape } from "@bufbuild/protobuf";
import {
  IndexKind,
  Metric,
  type FilterSchema,
  type Namespace,
  type Record as MemRecord,
  type Scalar,
  type Value,
  type UpsertRequestSchema,
} from "../../gen/ts/loom/memory/v1/memory_pb";
import type { App, View } from "./app";
import { checked, empty, field, fmtTime, h, json, onSubmit, select, show, status, fill } from "./dom";
import { clearFieldErrors, showError } from "./errors";

const PAGE = 20;

export const memoryView: View = async (app, root, params) => {
  const listBox = h("div");
  const detail = h("div", { class: "detail" });
  root.append(h("div", { class: "split" },
    h("section", { class: "panel side", "aria-labelledby": "mem-h" }, h("h2", { id: "mem-h", tabindex: -1 }, "Memory"), listBox, app.can("writer") ? createForm(app) : null),
    detail));
  void list(app, listBox, "");
  if (params[0]) await nsDetail(app, detail, params[0]);
  else detail.append(h("section", { class: "panel" }, h("p", { class: "empty" }, "Pick a namespace to upsert and search records.")));
};

async function list(app: App, box: HTMLElement, token: string): Promise<void> {
  const st = status("ns-list-status");
  box.replaceChildren(st);
  show(st, "busy", "loading…");
  try {
    const res = await app.memory.listNamespaces({ pageSize: PAGE, pageToken: token });
    fill(box, 
      res.namespaces.length
        ? h("ul", { class: "items", "data-testid": "ns-list" }, ...res.namespaces.map((n) => h("li", { "data-testid": "ns-item", "data-name": n.name },
            h("a", { href: `#/memory/${encodeURIComponent(n.name)}` }, n.name), h("small", null, ` dim ${n.dimension} · ${Metric[n.metric]?.toLowerCase()}`))))
        : empty("ns-empty", app.can("writer") ? "No namespaces yet. Create one below." : "No namespaces yet."),
      res.nextPageToken ? h("button", { type: "button", onclick: () => void list(app, box, res.nextPageToken) }, "Next page") : null,
      token ? h("button", { type: "button", onclick: () => void list(app, box, "") }, "First page") : null,
      st,
    );
    show(st, "ok", `${res.namespaces.length} namespace(s)`);
  } catch (err) {
    showError(st, err);
  }
}

function createForm(app: App): HTMLElement {
  const st = status("ns-create-status");
  const form = h("form", { "data-testid": "ns-create-form" },
    h("h3", null, "Create namespace"),
    h("label", null, h("span", { class: "lbl" }, "Name"), h("input", { name: "name", required: true, placeholder: "notes", "data-testid": "ns-name", "data-field": "namespace.name" })),
    h("label", null, h("span", { class: "lbl" }, "Dimension"), h("input", { name: "dimension", type: "number", min: 1, max: 4096, value: 256, "data-testid": "ns-dimension", "data-field": "namespace.dimension" })),
    h("label", null, h("span", { class: "lbl" }, "Metric"), select({ name: "metric", "data-testid": "ns-metric", "data-field": "namespace.metric" },
      [[String(Metric.COSINE), "cosine"], [String(Metric.DOT_PRODUCT), "dot product"], [String(Metric.L2), "L2"]])),
    h("label", null, h("span", { class: "lbl" }, "Index"), select({ name: "index", "data-testid": "ns-index", "data-field": "namespace.index.kind" },
      [[String(IndexKind.UNSPECIFIED), "store default"], [String(IndexKind.EXACT), "exact"], [String(IndexKind.HNSW), "HNSW"]])),
    h("label", null, h("span", { class: "lbl" }, "Embedder"), select({ name: "embedder", "data-field": "namespace.embedder.provider" },
      [["local", "local (offline)"], ["gemini", "Gemini"], ["openai", "OpenAI-compatible"]])),
    h("label", null, h("span", { class: "lbl" }, "Embedding model"), h("input", { name: "embedModel", "data-field": "namespace.embedder.model", placeholder: "ignored by local" })),
    h("label", null, h("span", { class: "lbl" }, "Description"), h("input", { name: "description", "data-field": "namespace.description" })),
    h("button", { type: "submit", "data-testid": "ns-create" }, "Create"),
    st,
  );
  onSubmit(form, async () => {
    clearFieldErrors(form);
    show(st, "busy", "creating…");
    try {
      const res = await app.memory.createNamespace({
        namespace: {
          name: field(form, "name"),
          dimension: Number(field(form, "dimension")),
          metric: Number(field(form, "metric")) as Metric,
          index: { kind: Number(field(form, "index")) as IndexKind },
          embedder: { provider: field(form, "embedder"), model: field(form, "embedModel") },
          description: field(form, "description"),
        },
      });
      show(st, "ok", `created ${res.namespace!.name}`);
      app.go(`#/memory/${encodeURIComponent(res.namespace!.name)}`);
    } catch (err) {
      showError(st, err, form);
    }
  });
  return form;
}

/** scalar reads a typed value from text: numbers, true/false, else a string. */
function scalar(text: string): MessageInitShape<typeof import("../../gen/ts/loom/memory/v1/memory_pb").ScalarSchema> {
  if (/^-?\d+(\.\d+)?([eE][-+]?\d+)?$/.test(text)) return { kind: { case: "numberValue", value: Number(text) } };
  if (text === "true" || text === "false") return { kind: { case: "boolValue", value: text === "true" } };
  return { kind: { case: "stringValue", value: text } };
}

function showValue(v: Value | Scalar): string {
  const k = v.kind;
  if (k.case === "listValue") return `[${k.value.values.map(showValue).join(", ")}]`;
  return k.case === "stringValue" ? JSON.stringify(k.value) : String(k.value);
}

/** metadataFromJSON turns a JSON object into typed metadata (scalars and lists of scalars). */
function metadataFromJSON(obj: unknown): Record<string, MessageInitShape<typeof import("../../gen/ts/loom/memory/v1/memory_pb").ValueSchema>> {
  if (!obj || typeof obj !== "object" || Array.isArray(obj)) throw new Error("metadata must be a JSON object");
  const out: Record<string, MessageInitShape<typeof import("../../gen/ts/loom/memory/v1/memory_pb").ValueSchema>> = {};
  const sc = (x: unknown) => typeof x === "number" ? { kind: { case: "numberValue" as const, value: x } }
    : typeof x === "boolean" ? { kind: { case: "boolValue" as const, value: x } } : { kind: { case: "stringValue" as const, value: String(x) } };
  for (const [k, v] of Object.entries(obj)) {
    out[k] = Array.isArray(v) ? { kind: { case: "listValue", value: { values: v.map(sc) } } } : sc(v);
  }
  return out;
}

async function nsDetail(app: App, box: HTMLElement, name: string): Promise<void> {
  const st = status("ns-status");
  box.append(st);
  let ns: Namespace;
  try {
    ns = (await app.memory.getNamespace({ name })).namespace!;
  } catch (err) {
    showError(st, err);
    return;
  }
  box.append(
    h("section", { class: "panel", "aria-labelledby": "ns-h" },
      h("h3", { id: "ns-h", "data-testid": "ns-title" }, ns.name),
      h("p", { class: "meta", "data-testid": "ns-meta" },
        `dimension ${ns.dimension} · ${Metric[ns.metric]?.toLowerCase()} · index ${ns.index?.kind ? IndexKind[ns.index.kind].toLowerCase() : "store default"} · embedder ${ns.embedder?.provider || "local"} · `,
        `${ns.stats?.recordCount ?? 0n} records · ${ns.stats?.sizeBytes ?? 0n} bytes · created ${fmtTime(ns.createTime)}`),
      ns.description ? h("p", null, ns.description) : null,
      app.can("writer") ? h("button", { type: "button", class: "danger", "data-testid": "ns-delete", onclick: async () => {
        if (!confirm(`Delete namespace ${name} and every record in it?`)) return;
        try {
          await app.memory.deleteNamespace({ name });
          app.go("#/memory");
        } catch (err) {
          showError(st, err);
        }
      } }, "Delete namespace") : null),
    app.can("writer") ? upsertForm(app, name) : h("p", { class: "note", "data-testid": "readonly-note" }, "Your role can search memory, not write it."),
    searchForm(app, name),
    lookupForm(app, name),
  );
}

function upsertForm(app: App, ns: string): HTMLElement {
  const st = status("rec-status");
  const form = h("form", { "data-testid": "rec-form" },
    h("label", null, h("span", { class: "lbl" }, "Format"), select({ name: "format", "data-testid": "rec-format" }, [["text", "one text record"], ["json", "JSON records"]])),
    h("label", null, h("span", { class: "lbl" }, "Id (optional)"), h("input", { name: "id", "data-testid": "rec-id", "data-field": "records[0].id" })),
    h("label", null, h("span", { class: "lbl" }, "Text, or JSON records"), h("textarea", { name: "text", rows: 4, required: true, "data-testid": "rec-text", "data-field": "records" }),
      h("small", { class: "hint" }, 'JSON: [{"id": "a", "text": "…", "metadata": {"kind": "note"}}]')),
    h("label", null, h("span", { class: "lbl" }, "Metadata (JSON object)"), h("input", { name: "metadata", "data-testid": "rec-metadata", "data-field": "records[0].metadata", placeholder: '{"kind": "note", "year": 2026}' })),
    h("button", { type: "submit", "data-testid": "rec-upsert" }, "Upsert"),
    st,
  );
  onSubmit(form, async () => {
    clearFieldErrors(form);
    let records: MessageInitShape<typeof UpsertRequestSchema>["records"];
    try {
      if (field(form, "format") === "json") {
        const arr = JSON.parse(field(form, "text"));
        if (!Array.isArray(arr)) throw new Error("JSON records must be an array");
        records = arr.map((r: { id?: string; text?: string; metadata?: unknown }) => ({ id: r.id ?? "", text: r.text ?? "", metadata: r.metadata ? metadataFromJSON(r.metadata) : {} }));
      } else {
        const md = field(form, "metadata");
        records = [{ id: field(form, "id"), text: field(form, "text"), metadata: md ? metadataFromJSON(JSON.parse(md)) : {} }];
      }
    } catch (e) {
      show(st, "error", `invalid input: ${(e as Error).message}`);
      return;
    }
    show(st, "busy", "upserting…");
    try {
      const res = await app.memory.upsert({ namespace: ns, records });
      show(st, "ok", `wrote ${res.ids.join(", ")}`);
    } catch (err) {
      showError(st, err, form);
    }
  });
  return h("section", { class: "panel", "aria-labelledby": "up-h" }, h("h3", { id: "up-h" }, "Upsert"), form);
}

const OPS: [string, string][] = [["eq", "="], ["ne", "≠"], ["in", "in (comma list)"], ["gt", ">"], ["gte", "≥"], ["lt", "<"], ["lte", "≤"], ["exists", "exists"], ["missing", "is missing"]];

function filterRow(): HTMLElement {
  const row: HTMLElement = h("div", { class: "filter-row", "data-testid": "filter-row" },
    h("label", null, h("span", { class: "lbl" }, "Key"), h("input", { name: "fkey", "data-testid": "filter-key", "data-field": "filter" })),
    h("label", null, h("span", { class: "lbl" }, "Operator"), select({ name: "fop", "data-testid": "filter-op" }, OPS)),
    h("label", null, h("span", { class: "lbl" }, "Value"), h("input", { name: "fval", "data-testid": "filter-value" })),
    h("button", { type: "button", class: "link", "aria-label": "remove condition", onclick: () => row.remove() }, "Remove"),
  );
  return row;
}

/** buildFilter reads the filter builder's rows into a Filter (undefined when there are none). */
function buildFilter(rows: HTMLElement[], combine: string): MessageInitShape<typeof FilterSchema> | undefined {
  const conds: MessageInitShape<typeof FilterSchema>[] = [];
  for (const r of rows) {
    const key = (r.querySelector("[name=fkey]") as HTMLInputElement).value.trim();
    const op = (r.querySelector("[name=fop]") as HTMLSelectElement).value;
    const val = (r.querySelector("[name=fval]") as HTMLInputElement).value.trim();
    if (!key) continue;
    let fop: NonNullable<MessageInitShape<typeof import("../../gen/ts/loom/memory/v1/memory_pb").FieldConditionSchema>["op"]>;
    switch (op) {
      case "eq": case "ne": fop = { case: op, value: scalar(val) }; break;
      case "in": fop = { case: "in", value: { values: val.split(",").map((x) => scalar(x.trim())) } }; break;
      case "exists": case "missing": fop = { case: "exists", value: op === "exists" }; break;
      default: fop = { case: "range", value: { [op]: Number(val) } };
    }
    conds.push({ kind: { case: "field", value: { key, op: fop } } });
  }
  if (!conds.length) return undefined;
  if (conds.length === 1) return conds[0];
  return { kind: { case: combine === "any" ? "any" : "all", value: { filters: conds } } };
}

function searchForm(app: App, ns: string): HTMLElement {
  const st = status("search-status");
  const hits = h("ol", { class: "hits", "data-testid": "search-hits" });
  const rows = h("div", { class: "filter-rows" });
  // Hybrid results are ranked by reciprocal rank fusion, whose scores are not the metric's: the server ignores a
  // minimum score then, so the field is disabled rather than silently ignored.
  const minHint = h("small", { class: "hint", id: "minscore-hint" }, "in the namespace's metric");
  const minScore = h("input", { name: "minScore", type: "number", step: "any", "data-testid": "search-minscore", "data-field": "min_score", "aria-describedby": "minscore-hint" });
  const hybrid = h("input", { type: "checkbox", name: "hybrid", "data-testid": "search-hybrid", onchange: () => {
    minScore.disabled = hybrid.checked;
    minHint.textContent = hybrid.checked ? "not used in hybrid mode (scores are rank fusion)" : "in the namespace's metric";
  } });
  const form = h("form", { "data-testid": "search-form" },
    h("label", null, h("span", { class: "lbl" }, "Query"), h("input", { name: "text", required: true, "data-testid": "search-text", "data-field": "text" })),
    h("div", { class: "row" },
      h("label", null, h("span", { class: "lbl" }, "Top k"), h("input", { name: "topK", type: "number", min: 1, max: 1000, value: 5, "data-testid": "search-topk", "data-field": "top_k" })),
      h("label", null, h("span", { class: "lbl" }, "Min score"), minScore, minHint),
      h("label", { class: "check" }, hybrid, h("span", null, "hybrid (vector + full text)"))),
    h("fieldset", null, h("legend", null, "Filter"),
      h("label", null, h("span", { class: "lbl" }, "Match"), select({ name: "combine", "data-testid": "filter-combine" }, [["all", "all conditions"], ["any", "any condition"]])),
      rows,
      h("button", { type: "button", "data-testid": "filter-add", onclick: () => rows.append(filterRow()) }, "Add condition")),
    h("button", { type: "submit", "data-testid": "search-run" }, "Search"),
    st,
  );
  onSubmit(form, async () => {
    clearFieldErrors(form);
    show(st, "busy", "searching…");
    hits.replaceChildren();
    try {
      const ms = field(form, "minScore");
      const res = await app.memory.search({
        namespace: ns,
        query: { case: "text", value: field(form, "text") },
        topK: Number(field(form, "topK") || 0),
        minScore: ms === "" || minScore.disabled ? undefined : Number(ms),
        hybrid: checked(form, "hybrid"),
        filter: buildFilter([...rows.children] as HTMLElement[], field(form, "combine")),
      });
      hits.replaceChildren(...res.hits.map((x) => hitItem(app, ns, x.record!, x.score, st)));
      if (!res.hits.length) hits.append(h("li", { class: "empty", "data-testid": "search-empty" }, "No records match. Loosen the filter or lower the minimum score."));
      show(st, "ok", `${res.hits.length} hit(s)`);
    } catch (err) {
      showError(st, err, form);
    }
  });
  return h("section", { class: "panel", "aria-labelledby": "search-h" }, h("h3", { id: "search-h" }, "Search"), form, hits);
}

/** recordDetail fills box with a record read back with Get: text, typed metadata, update and expiry times. */
async function recordDetail(app: App, ns: string, id: string, box: HTMLElement, st: HTMLElement): Promise<boolean> {
  try {
    const res = await app.memory.get({ namespace: ns, ids: [id] });
    const rec = res.records[0];
    box.replaceChildren(rec ? h("pre", { class: "json", "data-testid": "record-detail" }, json({
      id: rec.id, text: rec.text, metadata: Object.fromEntries(Object.entries(rec.metadata).map(([k, v]) => [k, showValue(v)])),
      updated: fmtTime(rec.updateTime), expires: fmtTime(rec.expireTime) || "never",
    })) : empty("record-missing", `No record "${id}" in ${ns}. Search for it, or upsert it first.`));
    return !!rec;
  } catch (err) {
    showError(st, err);
    return false;
  }
}

/** lookupForm reads one record by id (Get), with a delete for writers. */
function lookupForm(app: App, ns: string): HTMLElement {
  const st = status("lookup-status");
  const box = h("div", { class: "record-detail" });
  const del = h("button", {
    type: "button", class: "danger", "data-testid": "lookup-delete", hidden: true, onclick: async () => {
      const id = field(form, "id");
      if (!confirm(`Delete record ${id}?`)) return;
      try {
        const res = await app.memory.delete({ namespace: ns, selector: { case: "ids", value: { ids: [id] } } });
        box.replaceChildren();
        del.hidden = true;
        show(st, "ok", `deleted ${id} (${res.deletedCount} record)`);
      } catch (err) {
        showError(st, err);
      }
    },
  }, "Delete record");
  const form = h("form", { "data-testid": "lookup-form" },
    h("div", { class: "row" },
      h("label", null, h("span", { class: "lbl" }, "Record id"), h("input", { name: "id", required: true, "data-testid": "lookup-id", "data-field": "ids" })),
      h("button", { type: "submit", "data-testid": "lookup-run" }, "Show")),
    st, box, app.can("writer") ? del : null);
  onSubmit(form, async () => {
    clearFieldErrors(form);
    show(st, "busy", "reading…");
    const found = await recordDetail(app, ns, field(form, "id"), box, st);
    del.hidden = !found;
    if (st.dataset.state === "busy") show(st, found ? "ok" : "error", found ? "found" : "not found");
  });
  return h("section", { class: "panel", "aria-labelledby": "lookup-h" }, h("h3", { id: "lookup-h" }, "Record by id"), form);
}

function hitItem(app: App, ns: string, r: MemRecord, score: number, st: HTMLElement): HTMLElement {
  const detail = h("div", { class: "record-detail" });
  const li = h("li", { "data-testid": "search-hit", "data-id": r.id },
    h("span", { class: "score", "data-testid": "search-hit-score" }, score.toFixed(4)), " ",
    h("code", null, r.id), " ", r.text.length > 200 ? r.text.slice(0, 200) + "…" : r.text,
    Object.keys(r.metadata).length ? h("small", { class: "meta" }, " ", Object.entries(r.metadata).map(([k, v]) => `${k}=${showValue(v)}`).join(" ")) : null,
    h("div", { class: "row" },
      h("button", { type: "button", class: "link", "data-testid": "hit-detail", onclick: () => void recordDetail(app, ns, r.id, detail, st) }, "Details"),
      app.can("writer") ? h("button", { type: "button", class: "link danger", "data-testid": "hit-delete", onclick: async () => {
        if (!confirm(`Delete record ${r.id}?`)) return;
        try {
          await app.memory.delete({ namespace: ns, selector: { case: "ids", value: { ids: [r.id] } } });
          li.remove();
          show(st, "ok", `deleted ${r.id}`);
        } catch (err) {
          showError(st, err);
        }
      } }, "Delete") : null),
    detail,
  );
  return li;
}

