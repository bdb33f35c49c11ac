// The Memory panel: list and create namespaces, upsert a text record, search by text.

import { createClient, type Transport } from "@connectrpc/connect";
import { MemoryService, type Metric } from "../../gen/ts/loom/memory/v1/memory_pb";
import { byTestId, field, item, onSubmit, show, showError } from "./status";

export function mountMemory(transport: Transport): void {
  const client = createClient(MemoryService, transport);
  const list = byTestId("ns-list");
  const listStatus = byTestId("ns-list-status");

  const useNamespace = (name: string) => {
    byTestId<HTMLInputElement>("rec-namespace").value = name;
    byTestId<HTMLInputElement>("search-namespace").value = name;
  };

  const refresh = async () => {
    show(listStatus, "busy", "loading...");
    try {
      const res = await client.listNamespaces({ pageSize: 100 });
      list.replaceChildren(
        ...res.namespaces.map((ns) => {
          const li = item("ns-item", `${ns.name} (dim ${ns.dimension})`);
          li.dataset.name = ns.name;
          li.title = "use this namespace";
          li.addEventListener("click", () => useNamespace(ns.name));
          return li;
        }),
      );
      show(listStatus, "ok", `${res.namespaces.length} namespace(s)`);
    } catch (err) {
      showError(listStatus, err);
    }
  };
  byTestId("ns-refresh").addEventListener("click", () => void refresh());

  const createForm = byTestId<HTMLFormElement>("ns-create-form");
  const createStatus = byTestId("ns-create-status");
  onSubmit(createForm, async () => {
    show(createStatus, "busy", "creating...");
    try {
      const res = await client.createNamespace({
        namespace: {
          name: field(createForm, "name"),
          dimension: Number(field(createForm, "dimension")),
          metric: Number(field(createForm, "metric")) as Metric,
        },
      });
      const name = res.namespace?.name ?? field(createForm, "name");
      show(createStatus, "ok", `created ${name}`);
      useNamespace(name);
      await refresh();
    } catch (err) {
      showError(createStatus, err);
    }
  });

  const recForm = byTestId<HTMLFormElement>("rec-form");
  const recStatus = byTestId("rec-status");
  onSubmit(recForm, async () => {
    show(recStatus, "busy", "writing...");
    try {
      const res = await client.upsert({
        namespace: field(recForm, "namespace"),
        records: [{ id: field(recForm, "id"), text: field(recForm, "text") }],
      });
      show(recStatus, "ok", `upserted ${res.ids.join(", ")}`);
    } catch (err) {
      showError(recStatus, err);
    }
  });

  const searchForm = byTestId<HTMLFormElement>("search-form");
  const searchStatus = byTestId("search-status");
  const hits = byTestId("search-hits");
  onSubmit(searchForm, async () => {
    show(searchStatus, "busy", "searching...");
    hits.replaceChildren();
    try {
      const res = await client.search({
        namespace: field(searchForm, "namespace"),
        query: { case: "text", value: field(searchForm, "text") },
        topK: Number(field(searchForm, "topK")) || 0,
      });
      hits.replaceChildren(
        ...res.hits.map((h) => {
          const li = item("search-hit", "");
          li.dataset.id = h.record?.id ?? "";
          const score = document.createElement("span");
          score.className = "score";
          score.dataset.testid = "search-hit-score";
          score.textContent = h.score.toFixed(4);
          li.append(score, ` ${h.record?.id ?? ""}: ${h.record?.text ?? ""}`);
          return li;
        }),
      );
      show(searchStatus, "ok", `${res.hits.length} hit(s)`);
    } catch (err) {
      showError(searchStatus, err);
    }
  });

  void refresh();
}
