// Agents: the list, create and edit (every update is a new version) with every field of the contract, delete,
// a playground that streams a run (text, tool calls and results, memory hits, warnings, token usage), speech
// synthesis of the answer played in the page, and the agent's run history.

import { create, fromJson, toJson, type JsonValue } from "@bufbuild/protobuf";
import { FieldMaskSchema } from "@bufbuild/protobuf/wkt";
import {
  AgentSchema,
  AudioFormat,
  ChaosSchema,
  ToolSchema,
  Provider,
  RunState,
  VoiceProvider,
  type Agent,
  type Tool,
} from "../../gen/ts/loom/agent/v1/agent_pb";
import type { App, View } from "./app";
import { empty, field, fmtTime, h, json, onSubmit, select, show, status, checked, fill } from "./dom";
import { clearFieldErrors, showError } from "./errors";
import { fmtCost, fmtUsage, moneyAmount, parseMoney } from "./cost";
import { markErrors } from "./schema";

const PAGE = 20;

export const agentsView: View = async (app, root, params, signal) => {
  const listBox = h("div");
  root.append(h("div", { class: "split" },
    h("section", { class: "panel side", "aria-labelledby": "ag-h" },
      h("h2", { id: "ag-h", tabindex: -1 }, "Agents"),
      app.can("writer") ? h("a", { class: "button", href: "#/agents/new", "data-testid": "agent-new" }, "New agent") : null,
      listBox),
    h("div", { class: "detail", "data-testid": "agent-detail" })));
  const detail = root.querySelector<HTMLElement>("[data-testid=agent-detail]")!;
  void list(app, listBox, "");
  if (params[0] === "new") detail.append(agentForm(app, null));
  else if (params[0]) await agentDetail(app, detail, params[0], signal);
  else detail.append(h("section", { class: "panel" }, h("p", { class: "empty" }, "Pick an agent to edit it, try it in the playground and see its runs.")));
};

async function list(app: App, box: HTMLElement, token: string): Promise<void> {
  const st = status("agent-list-status");
  box.replaceChildren(st);
  show(st, "busy", "loading…");
  try {
    const res = await app.agents.listAgents({ pageSize: PAGE, pageToken: token });
    fill(box, 
      res.agents.length
        ? h("ul", { class: "items", "data-testid": "agent-list" }, ...res.agents.map((a) => h("li", { "data-testid": "agent-item", "data-name": a.name },
            h("a", { href: `#/agents/${encodeURIComponent(a.name)}` }, a.displayName || a.name), h("small", null, ` v${a.version} · ${Provider[a.model?.provider ?? 0]?.toLowerCase()}`))))
        : empty("agent-empty", app.can("writer") ? "No agents yet. Press “New agent” to make one." : "No agents yet."),
      res.nextPageToken ? h("button", { type: "button", onclick: () => void list(app, box, res.nextPageToken) }, "Next page") : null,
      token ? h("button", { type: "button", onclick: () => void list(app, box, "") }, "First page") : null,
      st,
    );
    show(st, "ok", `${res.agents.length} agent(s)`);
  } catch (err) {
    showError(st, err);
  }
}

function secs(d?: { seconds: bigint }): string {
  return d ? String(d.seconds) : "";
}

/** agentForm creates an agent (a null agent) or saves a new version of one. */
function agentForm(app: App, a: Agent | null): HTMLElement {
  const st = status(a ? "agent-save-status" : "agent-create-status");
  const tools = a?.tools ?? [];
  const has = (k: Tool["kind"]["case"]) => tools.some((t) => t.kind.case === k);
  const delegates = tools.flatMap((t) => (t.kind.case === "delegate" ? [t.kind.value.agent] : []));
  const hosts = tools.flatMap((t) => (t.kind.case === "httpFetch" ? t.kind.value.allowedHosts : []));
  // A delegate's description and the webhook and MCP tools have no simple control: the description is kept for
  // the agents still listed, and the other tools are edited as the contract's JSON.
  const delegateInfo = new Map(tools.flatMap((t) => (t.kind.case === "delegate" ? [[t.kind.value.agent, t.kind.value.description] as const] : [])));
  const ext = tools.filter((t) => t.kind.case === "webhook" || t.kind.case === "mcp");
  const extTools = ext.length ? JSON.stringify(ext.map((t) => toJson(ToolSchema, t)), null, 2) : "";
  const ro = !app.can("writer");
  const inp = (label: string, name: string, fieldPath: string, value: string, extra: Record<string, string | number | boolean> = {}, hint?: string) =>
    h("label", null, h("span", { class: "lbl" }, label), h("input", { name, value, "data-field": fieldPath, "data-testid": `agent-${name}`, disabled: ro, ...extra }), hint ? h("small", { class: "hint" }, hint) : null);
  const form = h("form", { class: "agent-form", "data-testid": a ? "agent-edit-form" : "agent-create-form" },
    h("fieldset", null, h("legend", null, "Agent"),
      inp("Name", "name", "agent.name", a?.name ?? "", { required: true, readonly: !!a, placeholder: "helper", pattern: "[a-z][a-z0-9_\\-]{0,62}" }, "lowercase letters, digits, - and _"),
      inp("Display name", "displayName", "agent.display_name", a?.displayName ?? ""),
      h("label", null, h("span", { class: "lbl" }, "Instructions"),
        h("textarea", { name: "instructions", rows: 4, "data-field": "agent.instructions", "data-testid": "agent-instructions", disabled: ro, value: a?.instructions ?? "You are a helpful assistant." }))),
    h("fieldset", null, h("legend", null, "Model"),
      h("label", null, h("span", { class: "lbl" }, "Provider"), select({ name: "provider", "data-field": "agent.model.provider", "data-testid": "agent-provider", disabled: ro },
        [[String(Provider.SIM), "simulated (offline)"], [String(Provider.GEMINI), "Gemini"], [String(Provider.OPENAI), "OpenAI-compatible"]], String(a?.model?.provider || Provider.SIM))),
      inp("Model name", "model", "agent.model.name", a?.model?.name ?? "", { placeholder: "gemini-2.5-flash" }, "ignored by the simulated model"),
      inp("Temperature", "temperature", "agent.model.temperature", a?.model?.temperature?.toString() ?? "", { type: "number", step: "0.1", min: 0, max: 2 }),
      inp("Max output tokens", "maxOutputTokens", "agent.model.max_output_tokens", a?.model?.maxOutputTokens ? String(a.model.maxOutputTokens) : "", { type: "number", min: 0 }),
      inp("Simulated reply", "simReply", "agent.model.sim", a?.model?.sim?.turns.find((t) => !t.whenContains && !t.toolCalls.length)?.reply ?? "", {}, "simulated model only: empty echoes the input"),
      inp("Simulated latency (ms)", "simLatency", "agent.model.sim.latency", a?.model?.sim?.latency ? String(Number(a.model.sim.latency.seconds) * 1000 + Math.round(a.model.sim.latency.nanos / 1e6)) : "", { type: "number", min: 0 }),
      inp("Simulated failure rate", "simFailure", "agent.model.sim.failure_rate", a?.model?.sim?.failureRate ? String(a.model.sim.failureRate) : "", { type: "number", min: 0, max: 1, step: "0.05" }, "0 to 1: the chance a model call fails with Unavailable")),
    h("fieldset", null, h("legend", null, "Tools"),
      h("label", { class: "check" }, h("input", { type: "checkbox", name: "toolSearch", checked: has("memorySearch"), disabled: ro, "data-field": "agent.tools" }), h("span", null, "memory_search")),
      h("label", { class: "check" }, h("input", { type: "checkbox", name: "toolSave", checked: has("memorySave"), disabled: ro }), h("span", null, "memory_save")),
      inp("Delegate to agents", "delegates", "agent.tools.delegate", delegates.join(", "), {}, "comma-separated agent names"),
      inp("HTTP fetch hosts", "hosts", "agent.tools.http_fetch", hosts.join(", "), {}, "comma-separated; empty disables http_fetch"),
      h("label", null, h("span", { class: "lbl" }, "Webhook and MCP tools (JSON)"),
        h("textarea", { name: "extTools", rows: 3, spellcheck: "false", "data-field": "agent.tools.webhook agent.tools.mcp", "data-testid": "agent-ext-tools", disabled: ro, value: extTools }),
        h("small", { class: "hint" }, 'a list of tools, for example [{"webhook": {"name": "lookup", "url": "https://…", "signingSecret": "…"}}] or [{"mcp": {"url": "https://…", "tool": "search"}}]; a stored signing secret is never shown, and kept when left empty'))),
    h("fieldset", null, h("legend", null, "Memory"),
      inp("Namespace", "memNamespace", "agent.memory.namespace", a?.memory?.namespace ?? ""),
      inp("Top k", "memTopK", "agent.memory.top_k", a?.memory?.topK ? String(a.memory.topK) : "", { type: "number", min: 0, max: 50 }),
      inp("Min score", "memMinScore", "agent.memory.min_score", a?.memory?.minScore?.toString() ?? "", { type: "number", step: "any" })),
    h("fieldset", null, h("legend", null, "Budgets"),
      inp("Max model calls", "maxSteps", "agent.budgets.max_steps", a?.budgets?.maxSteps ? String(a.budgets.maxSteps) : "", { type: "number", min: 0, max: 100 }, "0 means 8"),
      inp("Max tokens", "maxTokens", "agent.budgets.max_tokens", a?.budgets?.maxTokens ? String(a.budgets.maxTokens) : "", { type: "number", min: 0 }, "0 means unlimited"),
      inp("Max duration (s)", "maxDuration", "agent.budgets.max_duration", secs(a?.budgets?.maxDuration), { type: "number", min: 0, max: 3600 }, "empty means 5 minutes"),
      h("div", { class: "row" },
        inp("Max cost per run", "maxCost", "agent.budgets.max_cost", moneyAmount(a?.budgets?.maxCost), { inputmode: "decimal", placeholder: "0.25" }, "empty means no limit"),
        inp("Currency", "maxCostCurrency", "agent.budgets.max_cost.currency_code", a?.budgets?.maxCost?.currencyCode || "USD", { maxlength: 3, size: 4 }))),
    h("fieldset", null, h("legend", null, "Chaos (testing)"),
      h("label", null, h("span", { class: "lbl" }, "Faults injected into every run (JSON)"),
        h("textarea", { name: "chaos", rows: 2, spellcheck: "false", "data-field": "agent.chaos", "data-testid": "agent-chaos", disabled: ro, value: a?.chaos ? JSON.stringify(toJson(ChaosSchema, a.chaos)) : "" }),
        h("small", { class: "hint" }, 'empty injects nothing; for example {"failureRate": 0.2, "seed": "7", "code": "CHAOS_CODE_UNAVAILABLE"}'))),
    h("fieldset", null, h("legend", null, "Voice"),
      h("label", null, h("span", { class: "lbl" }, "Voice provider"), select({ name: "voiceProvider", "data-field": "agent.voice.provider", disabled: ro },
        [[String(VoiceProvider.ESPEAK), "espeak-ng (offline)"], [String(VoiceProvider.ELEVENLABS), "ElevenLabs"]], String(a?.voice?.provider || VoiceProvider.ESPEAK))),
      inp("Voice id", "voiceId", "agent.voice.voice_id", a?.voice?.voiceId ?? "", { placeholder: "en-us" })),
    ro ? h("p", { class: "note", "data-testid": "readonly-note" }, "Your role can read agents, not change them.")
      : h("button", { type: "submit", "data-testid": a ? "agent-save" : "agent-create" }, a ? `Save as v${(a.version ?? 0n) + 1n}` : "Create"),
    st,
  );
  onSubmit(form, async () => {
    clearFieldErrors(form);
    const num = (n: string) => (field(form, n) === "" ? 0 : Number(field(form, n)));
    const list = (n: string) => field(form, n).split(",").map((x) => x.trim()).filter(Boolean);
    const next = create(AgentSchema, a ?? {});
    next.name = field(form, "name");
    next.displayName = field(form, "displayName");
    next.instructions = field(form, "instructions");
    const sim = a?.model?.sim ?? { turns: [] };
    const reply = field(form, "simReply");
    next.model = {
      $typeName: "loom.agent.v1.Model",
      provider: Number(field(form, "provider")) as Provider,
      name: field(form, "model"),
      temperature: field(form, "temperature") === "" ? undefined : Number(field(form, "temperature")),
      maxOutputTokens: num("maxOutputTokens"),
      sim: {
        $typeName: "loom.agent.v1.SimScript",
        ...sim,
        latency: field(form, "simLatency") === "" ? undefined
          : { $typeName: "google.protobuf.Duration", seconds: BigInt(Math.floor(num("simLatency") / 1000)), nanos: (num("simLatency") % 1000) * 1e6 },
        failureRate: num("simFailure"),
        // The form edits the catch-all reply; scripted turns (matched by text, or with tool calls) are kept.
        turns: [...sim.turns.filter((t) => t.whenContains || t.toolCalls.length),
          ...(reply ? [{ $typeName: "loom.agent.v1.SimTurn" as const, whenContains: "", reply, toolCalls: [] }] : [])],
      },
    };
    const tl: Tool[] = [];
    if (checked(form, "toolSearch")) tl.push({ $typeName: "loom.agent.v1.Tool", kind: { case: "memorySearch", value: { $typeName: "loom.agent.v1.MemorySearchTool" } } });
    if (checked(form, "toolSave")) tl.push({ $typeName: "loom.agent.v1.Tool", kind: { case: "memorySave", value: { $typeName: "loom.agent.v1.MemorySaveTool" } } });
    for (const d of list("delegates")) tl.push({ $typeName: "loom.agent.v1.Tool", kind: { case: "delegate", value: { $typeName: "loom.agent.v1.DelegateTool", agent: d, description: delegateInfo.get(d) ?? "" } } });
    if (list("hosts").length) tl.push({ $typeName: "loom.agent.v1.Tool", kind: { case: "httpFetch", value: { $typeName: "loom.agent.v1.HttpFetchTool", allowedHosts: list("hosts") } } });
    // The JSON fields are read in the page first, so a typo is named at its control before anything is sent.
    const problems = new Map<string, string>();
    const parse = (name: string): JsonValue | undefined => {
      const text = field(form, name);
      if (!text) return undefined;
      try {
        return JSON.parse(text) as JsonValue;
      } catch (e) {
        problems.set(name, `not valid JSON: ${(e as Error).message}`);
        return undefined;
      }
    };
    const extJson = parse("extTools");
    if (extJson !== undefined) {
      if (!Array.isArray(extJson)) problems.set("extTools", "must be a JSON list of tools");
      else {
        extJson.forEach((t, i) => {
          try {
            const tool = fromJson(ToolSchema, t);
            if (tool.kind.case !== "webhook" && tool.kind.case !== "mcp") throw new Error("must be a webhook or mcp tool (the others have their own fields)");
            tl.push(tool);
          } catch (e) {
            problems.set("extTools", `tool ${i + 1}: ${(e as Error).message}`);
          }
        });
      }
    }
    const chaosJson = parse("chaos");
    if (chaosJson !== undefined) {
      try {
        next.chaos = fromJson(ChaosSchema, chaosJson);
      } catch (e) {
        problems.set("chaos", (e as Error).message);
      }
    } else next.chaos = undefined;
    let maxCost: ({ $typeName: "loom.cost.v1.Money" } & ReturnType<typeof parseMoney>) | undefined;
    if (field(form, "maxCost")) {
      try {
        maxCost = { $typeName: "loom.cost.v1.Money" as const, ...parseMoney(field(form, "maxCost"), field(form, "maxCostCurrency").toUpperCase()) };
      } catch (e) {
        problems.set("maxCost", (e as Error).message);
      }
    }
    if (problems.size) {
      const paths: Record<string, string> = { extTools: "agent.tools.webhook", chaos: "agent.chaos", maxCost: "agent.budgets.max_cost" };
      markErrors(form, "agent", new Map([...problems].map(([k, v]) => [paths[k].slice("agent.".length), v])));
      show(st, "error", `invalid_argument: ${[...problems].map(([k, v]) => `${paths[k]}: ${v}`).join("; ")}`);
      return;
    }
    next.tools = tl;
    next.memory = { $typeName: "loom.agent.v1.MemoryConfig", namespace: field(form, "memNamespace"), topK: num("memTopK"), minScore: field(form, "memMinScore") === "" ? undefined : Number(field(form, "memMinScore")) };
    next.budgets = {
      $typeName: "loom.agent.v1.Budgets", maxSteps: num("maxSteps"), maxTokens: BigInt(num("maxTokens")),
      maxDuration: field(form, "maxDuration") === "" ? undefined : { $typeName: "google.protobuf.Duration", seconds: BigInt(num("maxDuration")), nanos: 0 },
      maxCost,
    };
    next.voice = { $typeName: "loom.agent.v1.Voice", provider: Number(field(form, "voiceProvider")) as VoiceProvider, voiceId: field(form, "voiceId") };
    show(st, "busy", a ? "saving…" : "creating…");
    try {
      if (a) {
        const res = await app.agents.updateAgent({
          agent: next, etag: a.etag,
          updateMask: create(FieldMaskSchema, { paths: ["display_name", "instructions", "model", "tools", "memory", "budgets", "voice", "chaos"] }),
        });
        show(st, "ok", `saved ${res.agent!.name} v${res.agent!.version}`);
        app.go(`#/agents/${encodeURIComponent(res.agent!.name)}`);
      } else {
        const res = await app.agents.createAgent({ agent: next });
        show(st, "ok", `created ${res.agent!.name} v${res.agent!.version}`);
        app.go(`#/agents/${encodeURIComponent(res.agent!.name)}`);
      }
    } catch (err) {
      showError(st, err, form);
    }
  });
  return h("section", { class: "panel", "aria-labelledby": "agf-h" }, h("h3", { id: "agf-h" }, a ? `Edit ${a.name} (v${a.version})` : "New agent"), form);
}

async function agentDetail(app: App, box: HTMLElement, name: string, signal: AbortSignal): Promise<void> {
  const st = status("agent-status");
  box.append(st);
  let a: Agent;
  try {
    a = (await app.agents.getAgent({ name })).agent!;
  } catch (err) {
    showError(st, err);
    return;
  }
  const del = app.can("writer")
    ? h("button", { type: "button", class: "danger", "data-testid": "agent-delete", onclick: async () => {
        if (!confirm(`Delete agent ${name} and all its versions?`)) return;
        try {
          await app.agents.deleteAgent({ name });
          app.go("#/agents");
        } catch (err) {
          showError(st, err);
        }
      } }, "Delete agent")
    : null;
  const hist = history(app, name);
  box.append(
    h("section", { class: "panel" }, h("h3", { "data-testid": "agent-title" }, a.displayName || a.name, " ", h("small", null, `v${a.version} · updated ${fmtTime(a.updateTime)}`)), del),
    playground(app, a, signal, hist.reload),
    agentForm(app, a),
    hist.el,
  );
}

function playground(app: App, a: Agent, signal: AbortSignal, ran: () => void): HTMLElement {
  const st = status("run-status");
  const output = h("pre", { class: "output", "data-testid": "run-output", "aria-live": "off" });
  const events = h("ol", { class: "events", "data-testid": "run-events" });
  const noEvents = () => events.replaceChildren(h("li", { class: "empty" }, "None in this run."));
  const usage = h("div", { class: "usage", "data-testid": "run-usage" });
  const audio = h("div", { "data-testid": "speech" });
  const input = h("textarea", { name: "input", rows: 3, "data-field": "input", "data-testid": "run-input", required: true });
  const form = h("form", { "data-testid": "run-form" },
    h("label", null, h("span", { class: "lbl" }, "Input"), input),
    h("div", { class: "row" },
      h("button", { type: "submit", "data-testid": "run-start", disabled: !app.can("writer") }, "Run"),
      h("button", { type: "button", "data-testid": "speak", disabled: !app.can("writer"), onclick: () => void speak() }, "Speak the answer")),
    st,
  );
  const speak = async () => {
    const text = output.textContent || "";
    if (!text) return show(st, "error", "Run the agent first: there is no answer to speak.");
    show(st, "busy", "synthesizing speech…");
    try {
      const chunks: Uint8Array[] = [];
      for await (const c of app.agents.synthesizeSpeech({ text: text.slice(0, 16000), agent: a.name, format: AudioFormat.WAV }, { signal })) chunks.push(c.audio);
      const url = URL.createObjectURL(new Blob(chunks as BlobPart[], { type: "audio/wav" }));
      audio.replaceChildren(h("audio", { controls: true, src: url, "data-testid": "speech-audio" }));
      show(st, "ok", `speech: ${chunks.reduce((n, c) => n + c.length, 0)} bytes`);
    } catch (err) {
      showError(st, err);
    }
  };
  onSubmit(form, async () => {
    output.textContent = "";
    events.replaceChildren();
    usage.textContent = "";
    audio.replaceChildren();
    clearFieldErrors(form);
    show(st, "busy", "running…");
    try {
      let runId = "";
      for await (const ev of app.agents.runStream({ agent: a.name, input: input.value.trim() }, { signal })) {
        runId ||= ev.runId;
        const sub = ev.runId && ev.runId !== runId ? ` [delegated run ${ev.runId}]` : "";
        const note = (kind: string, text: string) => events.append(h("li", { "data-testid": "run-event", "data-kind": kind }, h("b", null, kind), ` ${text}${sub}`));
        switch (ev.event.case) {
          case "started": show(st, "busy", `running ${runId} (agent v${ev.event.value.agentVersion})`); break;
          case "textDelta": if (!sub) output.append(ev.event.value.text); break;
          case "toolCall": note("tool call", `${ev.event.value.name}(${json(ev.event.value.arguments ?? {})})`); break;
          case "toolResult": note("tool result", `${ev.event.value.name}: ${ev.event.value.error || json(ev.event.value.result ?? {})}`); break;
          case "memoryHits": note("memory", ev.event.value.hits.map((x) => `${x.id} (${x.score.toFixed(3)}): ${x.text.slice(0, 80)}`).join("; ") || "no hits"); break;
          case "usage": if (!sub) usage.textContent = fmtUsage(ev.runUsage); break;
          case "warning": note("warning", ev.event.value.message); break;
          case "completed":
          case "failed": {
            if (sub) break;
            const run = ev.event.value;
            usage.textContent = fmtUsage(run.usage);
            if (run.state === RunState.SUCCEEDED) show(st, "ok", `run ${run.id} succeeded`);
            else show(st, "error", `run ${run.id} ${RunState[run.state]?.toLowerCase() ?? "failed"}: ${run.error}`);
            break;
          }
        }
      }
      if (st.dataset.state === "busy") show(st, "error", `stream ended without a final event (run ${runId || "unknown"})`);
      if (!events.children.length) noEvents();
    } catch (err) {
      showError(st, err, form);
    }
    ran();
  });
  return h("section", { class: "panel", "aria-labelledby": "pg-h" }, h("h3", { id: "pg-h" }, "Playground"),
    app.can("writer") ? null : h("p", { class: "note", "data-testid": "readonly-note" }, "Your role cannot run agents."),
    form, h("h4", null, "Answer"), output, usage, h("h4", null, "Tool calls, memory and warnings"), events, audio);
}

function history(app: App, name: string): { el: HTMLElement; reload: () => void } {
  const st = status("agent-runs-status");
  const body = h("div", { "data-testid": "agent-runs" });
  const tokens = [""];
  const load = async (page: number) => {
    show(st, "busy", "loading…");
    try {
      const res = await app.agents.listRuns({ agent: name, pageSize: PAGE, pageToken: tokens[page] });
      tokens[page + 1] = res.nextPageToken;
      body.replaceChildren(
        res.runs.length
          ? h("table", { class: "table" },
              h("thead", null, h("tr", null, ...["Run", "State", "Created", "Tokens", "Cost", "Input", ""].map((t) => h("th", null, t)))),
              h("tbody", null, ...res.runs.map((r) => h("tr", { "data-testid": "agent-run-row" },
                h("td", null, h("code", null, r.id)), h("td", null, h("span", { class: `pill st-${RunState[r.state]?.toLowerCase()}` }, RunState[r.state]?.toLowerCase())),
                h("td", null, fmtTime(r.createTime)), h("td", null, `${r.usage?.inputTokens ?? 0n}/${r.usage?.outputTokens ?? 0n}`), h("td", { "data-testid": "agent-run-cost" }, fmtCost(r.usage)), h("td", null, r.input.slice(0, 80)),
                h("td", null, app.can("writer") && r.state !== RunState.RUNNING ? h("button", { type: "button", class: "link danger", "aria-label": `delete run ${r.id}`, onclick: async () => {
                  if (!confirm(`Delete run ${r.id}?`)) return;
                  try {
                    await app.agents.deleteRun({ id: r.id });
                    await load(page);
                  } catch (err) {
                    showError(st, err);
                  }
                } }, "Delete") : "")))))
          : empty("agent-runs-empty", "No runs yet. Try the agent in the playground."),
        h("div", { class: "row" },
          page > 0 ? h("button", { type: "button", onclick: () => void load(page - 1) }, "Previous page") : null,
          res.nextPageToken ? h("button", { type: "button", onclick: () => void load(page + 1) }, "Next page") : null),
      );
      show(st, "ok", `${res.runs.length} run(s)`);
    } catch (err) {
      showError(st, err);
    }
  };
  void load(0);
  return {
    el: h("section", { class: "panel", "aria-labelledby": "hist-h" }, h("h3", { id: "hist-h" }, "Run history"),
      h("button", { type: "button", onclick: () => void load(0) }, "Refresh"), body, st),
    reload: () => void load(0),
  };
}
