// The Agents panel: list agents, create one on the simulated model, and run it with RunStream, rendering text
// deltas as they arrive and the final usage.

import { createClient, type Transport } from "@connectrpc/connect";
import { AgentService, Provider, RunState } from "../../gen/ts/loom/agent/v1/agent_pb";
import { byTestId, field, item, onSubmit, show, showError } from "./status";

export function mountAgents(transport: Transport): void {
  const client = createClient(AgentService, transport);
  const list = byTestId("agent-list");
  const listStatus = byTestId("agent-list-status");

  const refresh = async () => {
    show(listStatus, "busy", "loading...");
    try {
      const res = await client.listAgents({ pageSize: 100 });
      list.replaceChildren(
        ...res.agents.map((a) => {
          const li = item("agent-item", `${a.name} v${a.version}`);
          li.dataset.name = a.name;
          li.title = "run this agent";
          li.addEventListener("click", () => (byTestId<HTMLInputElement>("run-agent").value = a.name));
          return li;
        }),
      );
      show(listStatus, "ok", `${res.agents.length} agent(s)`);
    } catch (err) {
      showError(listStatus, err);
    }
  };
  byTestId("agent-refresh").addEventListener("click", () => void refresh());

  const createForm = byTestId<HTMLFormElement>("agent-create-form");
  const createStatus = byTestId("agent-create-status");
  onSubmit(createForm, async () => {
    show(createStatus, "busy", "creating...");
    try {
      const res = await client.createAgent({
        agent: {
          name: field(createForm, "name"),
          instructions: field(createForm, "instructions"),
          model: { provider: Provider.SIM },
        },
      });
      const name = res.agent?.name ?? field(createForm, "name");
      show(createStatus, "ok", `created ${name} v${res.agent?.version ?? 1n}`);
      byTestId<HTMLInputElement>("run-agent").value = name;
      await refresh();
    } catch (err) {
      showError(createStatus, err);
    }
  });

  const runForm = byTestId<HTMLFormElement>("run-form");
  const runStatus = byTestId("run-status");
  const output = byTestId("run-output");
  const usage = byTestId("run-usage");
  onSubmit(runForm, async () => {
    output.textContent = "";
    usage.textContent = "";
    show(runStatus, "busy", "running...");
    try {
      let runId = "";
      for await (const ev of client.runStream({ agent: field(runForm, "agent"), input: field(runForm, "input") })) {
        runId = ev.runId || runId;
        switch (ev.event.case) {
          case "started":
            show(runStatus, "busy", `running ${runId} (agent v${ev.event.value.agentVersion})`);
            break;
          case "textDelta":
            output.append(ev.event.value.text);
            break;
          case "warning":
            show(runStatus, "busy", `warning: ${ev.event.value.message}`);
            break;
          case "completed":
          case "failed": {
            const run = ev.event.value;
            const u = run.usage;
            usage.textContent = `usage: ${u?.inputTokens ?? 0n} input, ${u?.outputTokens ?? 0n} output tokens`;
            if (run.state === RunState.SUCCEEDED) {
              show(runStatus, "ok", `run ${run.id} succeeded`);
            } else {
              show(runStatus, "error", `run ${run.id} ${RunState[run.state]?.toLowerCase() ?? "failed"}: ${run.error}`);
            }
            break;
          }
        }
      }
      if (runStatus.dataset.state === "busy") {
        show(runStatus, "error", `stream ended without a final event (run ${runId || "unknown"})`);
      }
    } catch (err) {
      showError(runStatus, err);
    }
  });

  void refresh();
}
