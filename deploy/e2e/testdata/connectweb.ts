// Bundled by connectweb.mjs with esbuild and run in Chromium: Connect-Web calls to the gateway with a bearer
// key, from a page on another origin.

import { Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";
import { AgentService, RunState } from "../../../gen/ts/loom/agent/v1/agent_pb";
import { MemoryService } from "../../../gen/ts/loom/memory/v1/memory_pb";

async function run(base: string, key: string) {
  const bearer: Interceptor = (next) => async (req) => {
    req.header.set("Authorization", `Bearer ${key}`);
    return next(req);
  };
  const transport = createConnectTransport({ baseUrl: base, interceptors: [bearer] });
  const memory = createClient(MemoryService, transport);
  const agents = createClient(AgentService, transport);

  const list = await memory.listNamespaces({});
  const search = await memory.search({
    namespace: "notes",
    query: { case: "text", value: "a long journey" },
    topK: 5,
    filter: { kind: { case: "field", value: { key: "topic", op: { case: "eq", value: { kind: { case: "stringValue", value: "travel" } } } } } },
  });

  const stream = { events: 0, deltas: 0, state: "", memoryHit: false };
  for await (const ev of agents.runStream({ agent: "helper", input: "which ship passed the lighthouse" })) {
    stream.events++;
    if (ev.event.case === "textDelta") stream.deltas++;
    if (ev.event.case === "memoryHits" && ev.event.value.hits.length > 0) stream.memoryHit = true;
    if (ev.event.case === "completed" || ev.event.case === "failed") stream.state = RunState[ev.event.value.state];
  }
  if (stream.state) stream.state = "RUN_STATE_" + stream.state;

  let unauthenticated = "";
  try {
    await createClient(MemoryService, createConnectTransport({ baseUrl: base })).listNamespaces({});
    unauthenticated = "call succeeded";
  } catch (e) {
    unauthenticated = Code[ConnectError.from(e).code].toLowerCase();
  }

  return {
    origin: window.location.origin,
    namespaces: list.namespaces.map((n) => n.name),
    searchIds: search.hits.map((h) => h.record?.id ?? ""),
    stream,
    unauthenticated,
  };
}

(window as unknown as { loomE2E: typeof run }).loomE2E = run;
