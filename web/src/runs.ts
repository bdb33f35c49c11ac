// Runs: start one from a form generated from the blueprint's input schema, list them (filtered by state and
// blueprint, paginated), and watch one live: the graph's nodes coloured by step state from WatchRun, the event
// timeline, agent text as it streams, each step's details, cancel, and the approvals the run waits for. The
// watch resumes after a dropped connection with after_sequence, so no event is shown twice.

import { Code, ConnectError } from "@connectrpc/connect";
import {
  Decision,
  RunState,
  StepState,
  type Approval,
  type Step,
  type WatchRunResponse,
  type WorkflowRun,
} from "../../gen/ts/loom/orchestrator/v1/orchestrator_pb";
import type { App, View } from "./app";
import { drawCanvas, type CanvasView } from "./canvas";
import { empty, fmtMs, fmtTime, h, json, onSubmit, select, show, status, field, fill } from "./dom";
import { showError, clearFieldErrors } from "./errors";
import { markErrors, schemaForm } from "./schema";
import { fmtCost, fmtMoney, fmtUsage } from "./cost";
import { stepDefinition } from "./yaml";

const PAGE = 20;

export function runStateName(s: RunState): string {
  return (RunState[s] ?? "unspecified").toLowerCase();
}
export function stepStateName(s: StepState): string {
  return (StepState[s] ?? "unspecified").toLowerCase();
}
const terminal = (s: RunState) => s === RunState.SUCCEEDED || s === RunState.FAILED || s === RunState.CANCELLED;

export const runsView: View = async (app, root, params, signal) => {
  if (params[0] === "new") return startForm(app, root, params[1] ?? "");
  if (params[0]) return runDetail(app, root, params[0], signal);
  root.append(
    h("section", { class: "panel", "aria-labelledby": "runs-h" },
      h("h2", { id: "runs-h", tabindex: -1 }, "Runs"),
      app.can("writer") ? h("a", { class: "button", href: "#/runs/new", "data-testid": "run-new" }, "Start a run") : null,
      await runList(app)),
  );
};

async function runList(app: App): Promise<HTMLElement> {
  const st = status("runs-status");
  const body = h("div");
  const bps = await app.orch.listBlueprints({ pageSize: 1000 }).then((r) => r.blueprints.map((b) => b.name)).catch(() => [] as string[]);
  const form = h("form", { class: "filters", "data-testid": "runs-filter" },
    h("label", null, h("span", { class: "lbl" }, "State"), select({ name: "state", "data-testid": "runs-state" },
      [["0", "any"], ...[RunState.RUNNING, RunState.WAITING, RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED].map((s) => [String(s), runStateName(s)] as [string, string])])),
    h("label", null, h("span", { class: "lbl" }, "Blueprint"), select({ name: "blueprint", "data-testid": "runs-blueprint", "data-field": "blueprint" }, [["", "any"], ...bps.map((b) => [b, b] as [string, string])])),
    h("button", { type: "submit" }, "Filter"),
  );
  const tokens: string[] = [""];
  const load = async (page: number) => {
    show(st, "busy", "loading…");
    try {
      const res = await app.orch.listRuns({ state: Number(field(form, "state")) as RunState, blueprint: field(form, "blueprint"), pageSize: PAGE, pageToken: tokens[page] });
      tokens[page + 1] = res.nextPageToken;
      body.replaceChildren(
        res.runs.length
          ? h("table", { class: "table", "data-testid": "runs-table" },
              h("thead", null, h("tr", null, h("th", null, "Run"), h("th", null, "Blueprint"), h("th", null, "State"), h("th", null, "Created"))),
              h("tbody", null, ...res.runs.map((r) => h("tr", { "data-testid": "run-row", "data-id": r.id, "data-state": runStateName(r.state) },
                h("td", null, h("a", { href: `#/runs/${encodeURIComponent(r.id)}` }, r.id)),
                h("td", null, `${r.blueprint} v${r.blueprintVersion}`),
                h("td", null, h("span", { class: `pill st-${runStateName(r.state)}` }, runStateName(r.state))),
                h("td", null, fmtTime(r.createTime))))))
          : empty("runs-empty", app.can("writer") ? "No runs match. Start one with “Start a run”." : "No runs match."),
        h("div", { class: "row" },
          page > 0 ? h("button", { type: "button", onclick: () => void load(page - 1) }, "Previous page") : null,
          res.nextPageToken ? h("button", { type: "button", "data-testid": "runs-more", onclick: () => void load(page + 1) }, "Next page") : null),
      );
      show(st, "ok", `${res.runs.length} run(s)`);
    } catch (err) {
      showError(st, err, form);
    }
  };
  onSubmit(form, () => load(0));
  void load(0);
  return h("div", null, form, body, st);
}

async function startForm(app: App, root: HTMLElement, name: string): Promise<void> {
  const panel = h("section", { class: "panel", "aria-labelledby": "start-h" }, h("h2", { id: "start-h", tabindex: -1 }, "Start a run"));
  root.append(panel);
  if (!app.can("writer")) {
    panel.append(h("p", { class: "note", "data-testid": "readonly-note" }, "Your role can read runs, not start them."));
    return;
  }
  const st = status("start-status");
  const bps = await app.orch.listBlueprints({ pageSize: 1000 }).then((r) => r.blueprints).catch((err) => (showError(st, err), []));
  if (!bps.length) {
    panel.append(empty("start-empty", "No blueprints yet. Create one under Blueprints first."), st);
    return;
  }
  const pick = select({ name: "blueprint", "data-testid": "start-blueprint", "data-field": "blueprint" }, bps.map((b) => [b.name, `${b.name} (v${b.version})`]), name || bps[0].name);
  const inputBox = h("fieldset", { class: "input" }, h("legend", null, "Input"));
  const key = h("input", { name: "idempotencyKey", "data-testid": "start-key", "data-field": "idempotency_key", value: crypto.randomUUID() });
  const estimate = h("div", { class: "usage", "data-testid": "start-estimate", "aria-live": "polite" });
  const form = h("form", { "data-testid": "start-form", novalidate: true },
    h("label", null, h("span", { class: "lbl" }, "Blueprint"), pick),
    inputBox,
    estimate,
    h("label", null, h("span", { class: "lbl" }, "Idempotency key"), key, h("small", { class: "hint" }, "Starting twice with the same key returns the same run.")),
    h("button", { type: "submit", "data-testid": "start-run" }, "Start"),
    st,
  );
  let sf = schemaForm(undefined, "input", "start-input");
  const fill = () => {
    const bp = bps.find((b) => b.name === pick.value);
    sf = schemaForm(bp?.inputSchema, "input", "start-input");
    inputBox.replaceChildren(h("legend", null, "Input"), sf.el);
    void showEstimate(app, estimate, pick.value);
  };
  pick.addEventListener("change", fill);
  fill();
  onSubmit(form, async () => {
    clearFieldErrors(form);
    const { value, errors } = sf.read();
    if (errors.size) {
      markErrors(form, "input", errors);
      show(st, "error", "Fix the input fields marked below.");
      return;
    }
    show(st, "busy", "starting…");
    try {
      const res = await app.orch.startRun({ blueprint: pick.value, input: value, idempotencyKey: key.value.trim() });
      app.go(`#/runs/${encodeURIComponent(res.run!.id)}`);
    } catch (err) {
      showError(st, err, form);
    }
  });
  panel.append(form);
}

/**
 * stepInput shows what a step is given, as its definition says: the CEL expression of an agent step's input or of
 * a memory step's query or text, and the whole definition on demand.
 */
function stepInput(step?: Step): HTMLElement | string {
  if (!step) return "";
  const k = step.kind;
  const expr = k.case === "agent" ? k.value.input
    : k.case === "memorySearch" ? k.value.query
    : k.case === "memoryUpsert" ? k.value.text : undefined;
  const who = k.case === "agent" ? `agent ${k.value.agent}` : (k.case ?? "step").replace(/[A-Z]/g, (c) => "_" + c.toLowerCase());
  return h("details", null, h("summary", null, who, expr ? [": ", h("code", null, expr.length > 60 ? expr.slice(0, 60) + "…" : expr)] : null),
    h("pre", { class: "json" }, stepDefinition(step)));
}

/** Test and debugging hook: window.__loomWatch.drop() cuts the live WatchRun stream as a network drop would. */
declare global {
  interface Window { __loomWatch?: { drop(): void; reconnects: number } }
}

async function runDetail(app: App, root: HTMLElement, id: string, signal: AbortSignal): Promise<void> {
  const st = status("run-status");
  const panel = h("section", { class: "panel", "aria-labelledby": "run-h" }, h("h2", { id: "run-h", tabindex: -1 }, "Run ", h("code", null, id)), st);
  root.append(panel);
  let run: WorkflowRun;
  try {
    run = (await app.orch.getRun({ id })).run!;
  } catch (err) {
    showError(st, err);
    return;
  }
  const head = h("div", { class: "run-head" });
  const canvasBox = h("div", { class: "canvas-box" });
  const stepsBox = h("div", { "data-testid": "run-steps" });
  const approvalsBox = h("div", { "data-testid": "run-approvals" });
  const timeline = h("ol", { class: "timeline", "data-testid": "timeline", "aria-label": "event timeline" });
  const texts = new Map<string, HTMLElement>();
  const textBox = h("div", { class: "agent-text", "data-testid": "run-text" }, empty("run-text-empty", "No agent text streamed for this run yet."));
  // The graph gets the whole width (it is what people watch); what needs a person and what happened sit below.
  root.append(
    h("section", { class: "panel", "aria-labelledby": "graph-h" }, h("h3", { id: "graph-h" }, "Graph"), canvasBox),
    h("div", { class: "split wide" },
      h("div", { class: "detail" },
        h("section", { class: "panel", "aria-labelledby": "appr-h" }, h("h3", { id: "appr-h" }, "Approvals"), approvalsBox),
        h("section", { class: "panel", "aria-labelledby": "text-h" }, h("h3", { id: "text-h" }, "Agent output"), textBox)),
      h("section", { class: "panel", "aria-labelledby": "tl-h" }, h("h3", { id: "tl-h" }, "Events"), timeline)),
    h("section", { class: "panel", "aria-labelledby": "steps-h" }, h("h3", { id: "steps-h" }, "Steps"), stepsBox),
  );
  panel.append(head);

  let graph: CanvasView | null = null;
  // The steps as the pinned blueprint version defines them: what each one is given (StepRun has no resolved input).
  let defs = new Map<string, Step>();
  const renderRun = () => {
    panel.dataset.state = runStateName(run.state);
    fill(head, 
      h("p", null, "State ", h("span", { class: `pill st-${runStateName(run.state)}`, "data-testid": "run-state" }, runStateName(run.state)),
        " · blueprint ", h("a", { href: `#/blueprints/${encodeURIComponent(run.blueprint)}/${run.blueprintVersion}` }, `${run.blueprint} v${run.blueprintVersion}`),
        ` · created ${fmtTime(run.createTime)}`, run.endTime ? ` · ended ${fmtTime(run.endTime)}` : ""),
      h("p", { class: "usage", "data-testid": "wf-run-usage" }, fmtUsage(run.usage),
        run.anomaly ? h("span", { class: "pill st-failed", "data-testid": "run-anomaly" },
          `anomaly: ${[run.anomaly.cost ? `cost above p99 ${fmtMoney(run.anomaly.costP99)}` : "", run.anomaly.duration ? "duration above p99" : ""].filter(Boolean).join(", ")}`) : null),
      run.error ? h("p", { class: "error-text", "data-testid": "run-error" }, run.error) : null,
      run.output !== undefined ? h("details", { open: true }, h("summary", null, "Output"), h("pre", { class: "json", "data-testid": "run-output" }, json(run.output))) : null,
      run.input ? h("details", null, h("summary", null, "Input"), h("pre", { class: "json" }, json(run.input))) : null,
      app.can("writer") && !terminal(run.state)
        ? h("button", { type: "button", class: "danger", "data-testid": "run-cancel", onclick: cancel }, "Cancel run") : null,
      app.can("writer") && terminal(run.state)
        ? h("button", { type: "button", class: "danger", "data-testid": "run-delete", onclick: remove }, "Delete run") : null,
    );
    for (const s of run.steps) graph?.setState(s.stepId, stepStateName(s.state));
    stepsBox.replaceChildren(
      h("table", { class: "table" },
        h("thead", null, h("tr", null, ...["Step", "State", "Input", "Attempts", "Duration", "Tokens", "Cost", "Error", "Output"].map((t) => h("th", null, t)))),
        h("tbody", null, ...run.steps.map((s) => {
          const start = s.startTime ? Number(s.startTime.seconds) * 1000 + s.startTime.nanos / 1e6 : 0;
          const end = s.endTime ? Number(s.endTime.seconds) * 1000 + s.endTime.nanos / 1e6 : 0;
          const u = s.usage;
          return h("tr", { "data-testid": "step-row", "data-step": s.stepId, "data-state": stepStateName(s.state) },
            h("td", null, s.stepId),
            h("td", null, h("span", { class: `pill st-${stepStateName(s.state)}` }, stepStateName(s.state))),
            h("td", { "data-testid": "step-input" }, stepInput(defs.get(s.stepId))),
            h("td", { "data-testid": "step-attempts" }, s.attempts),
            h("td", { "data-testid": "step-duration" }, start && end ? fmtMs(end - start) : start ? "running" : ""),
            h("td", { "data-testid": "step-tokens" }, u && (u.inputTokens || u.outputTokens)
              ? `${u.inputTokens} in${u.cachedInputTokens ? ` (${u.cachedInputTokens} cached)` : ""} / ${u.outputTokens} out` : ""),
            h("td", { "data-testid": "step-cost" }, u ? fmtCost(u) : ""),
            h("td", { class: "error-text", "data-testid": "step-error" }, s.error),
            h("td", null, s.output !== undefined ? h("details", null, h("summary", null, "show"), h("pre", { class: "json", "data-testid": "step-output" }, json(s.output))) : ""));
        }))),
    );
  };
  const cancel = async () => {
    const reason = prompt("Why cancel this run? (recorded with the run)", "cancelled from the console");
    if (reason === null) return;
    try {
      run = (await app.orch.cancelRun({ id, reason })).run!;
      renderRun();
    } catch (err) {
      showError(st, err);
    }
  };
  const remove = async () => {
    if (!confirm(`Delete run ${id} with its steps and events?`)) return;
    try {
      await app.orch.deleteRun({ id });
      app.go("#/runs");
    } catch (err) {
      showError(st, err);
    }
  };
  renderRun();
  app.orch.getBlueprint({ name: run.blueprint, version: run.blueprintVersion })
    .then((res) => {
      defs = new Map((res.blueprint?.steps ?? []).map((x) => [x.id, x]));
      renderRun();
    })
    .catch(() => {}); // the table still shows every step's state, output and error without the definitions
  app.orch.generateCanvas({ target: { case: "ref", value: { name: run.blueprint, version: run.blueprintVersion } } })
    .then((res) => {
      graph = drawCanvas(res.canvas!, (step) => stepsBox.querySelector<HTMLElement>(`[data-step="${CSS.escape(step)}"]`)?.scrollIntoView({ block: "nearest" }));
      canvasBox.replaceChildren(graph.svg);
      renderRun();
    })
    .catch((err) => {
      const cst = status("canvas-status");
      canvasBox.replaceChildren(cst);
      showError(cst, err);
    });

  const refreshApprovals = async () => {
    try {
      const res = await app.orch.listPendingApprovals({ runId: id, pageSize: 50 });
      approvalsBox.replaceChildren(...(res.approvals.length ? res.approvals.map((a) => approvalCard(app, a, () => void refresh())) : [empty("run-approvals-empty", "Nothing waiting for a person.")]));
    } catch (err) {
      const s2 = status("approvals-status");
      approvalsBox.replaceChildren(s2);
      showError(s2, err);
    }
  };
  let pending: Promise<void> | null = null;
  const refresh = () => {
    pending ??= (async () => {
      try {
        run = (await app.orch.getRun({ id })).run!;
        renderRun();
        await refreshApprovals();
      } catch (err) {
        showError(st, err);
      } finally {
        pending = null;
      }
    })();
    return pending;
  };
  void refreshApprovals();

  // The watch loop: resume from the last sequence applied after any drop, until the run ends or the view closes.
  let lastSeq = 0n;
  let reconnects = 0;
  let streamCtrl: AbortController | null = null;
  window.__loomWatch = {
    drop: () => streamCtrl?.abort(),
    get reconnects() { return reconnects; },
  };
  signal.addEventListener("abort", () => streamCtrl?.abort());
  const apply = (ev: WatchRunResponse) => {
    const step = ev.stepId;
    let text = "";
    switch (ev.event.case) {
      case "runStarted": text = `run started (blueprint v${ev.event.value.blueprintVersion})`; break;
      case "stepStarted": text = `attempt ${ev.event.value.attempt} started`; graph?.setState(step, "running"); break;
      case "stepOutput": text = ev.event.value.usage ? `finished · cost ${fmtCost(ev.event.value.usage)}` : "finished"; graph?.setState(step, "succeeded"); void refresh(); break;
      case "stepRetry": text = `attempt ${ev.event.value.attempt} failed: ${ev.event.value.error}; retrying`; break;
      case "waitingForApproval": text = `waiting for approval: ${ev.event.value.prompt}`; graph?.setState(step, "waiting"); void refresh(); break;
      case "agentTextDelta": {
        let box = texts.get(step);
        if (!box) {
          box = h("pre", { class: "output", "data-testid": "run-agent-text", "data-step": step });
          texts.set(step, box);
          textBox.querySelector("[data-testid=run-text-empty]")?.remove();
          textBox.append(h("h4", null, step), box);
        }
        box.append(ev.event.value.text);
        return; // deltas are not timeline entries: they stream into the step's text
      }
      case "runCompleted": text = `run succeeded · cost ${fmtCost(ev.event.value.usage)}`; void refresh(); break;
      case "runFailed": text = `run failed: ${ev.event.value.error}`; void refresh(); break;
      case "runCancelled": text = `run cancelled: ${ev.event.value.reason}`; void refresh(); break;
      default: text = "event";
    }
    timeline.append(h("li", { "data-testid": "event", "data-seq": String(ev.sequence), "data-kind": ev.event.case ?? "", "data-step": step },
      h("span", { class: "seq" }, `#${ev.sequence}`), " ", h("time", null, fmtTime(ev.time)), " ", step ? h("b", null, step) : null, step ? " " : null, text));
  };
  let backoff = 250;
  while (!signal.aborted) {
    streamCtrl = new AbortController();
    let ended = false;
    try {
      show(st, "busy", reconnects ? `watching (reconnected ${reconnects}×)` : "watching live…");
      for await (const ev of app.orch.watchRun({ id, afterSequence: lastSeq }, { signal: streamCtrl.signal })) {
        backoff = 250;
        if (ev.sequence <= lastSeq) continue; // never show an event twice
        lastSeq = ev.sequence;
        timeline.dataset.last = String(lastSeq);
        apply(ev);
      }
      ended = true;
    } catch (err) {
      if (signal.aborted) return;
      const code = ConnectError.from(err).code;
      if (code !== Code.Canceled && code !== Code.Unavailable && code !== Code.Unknown && code !== Code.DeadlineExceeded) {
        showError(st, err);
        return;
      }
    }
    if (signal.aborted) return;
    if (ended) {
      await refresh();
      if (terminal(run.state)) {
        show(st, "ok", `run ${runStateName(run.state)}; ${lastSeq} events${reconnects ? `, ${reconnects} reconnect(s)` : ""}`);
        return;
      }
    }
    reconnects++;
    show(st, "busy", `connection lost; reconnecting after event #${lastSeq}…`);
    await new Promise((r) => setTimeout(r, backoff));
    backoff = Math.min(backoff * 2, 5000);
  }
}

/** approvalCard shows one waiting approval with a payload form from its schema and Approve / Reject. */
function approvalCard(app: App, a: Approval, done: () => void): HTMLElement {
  const st = status("approval-status");
  const sf = schemaForm(a.payloadSchema, "payload", "approval-payload");
  const comment = h("input", { name: "comment", "data-field": "comment", "data-testid": "approval-comment" });
  const form = h("form", { class: "approval", novalidate: true, "data-testid": "approval", "data-run": a.runId, "data-step": a.stepId },
    h("p", null, h("b", null, a.prompt || "Approve this step?")),
    h("p", { class: "meta" }, `${a.blueprint} · run `, h("a", { href: `#/runs/${encodeURIComponent(a.runId)}` }, a.runId), ` · step ${a.stepId}`, a.deadline ? ` · expires ${fmtTime(a.deadline)}` : ""),
    app.can("writer")
      ? [h("fieldset", null, h("legend", null, "Payload"), sf.el),
         h("label", null, h("span", { class: "lbl" }, "Comment"), comment),
         h("div", { class: "row" },
           h("button", { type: "submit", name: "approve", "data-testid": "approve" }, "Approve"),
           h("button", { type: "submit", name: "reject", class: "danger", "data-testid": "reject" }, "Reject"))]
      : h("p", { class: "note", "data-testid": "readonly-note" }, "Your role can see approvals, not decide them."),
    st,
  );
  onSubmit(form, async (submitter) => {
    clearFieldErrors(form);
    const { value, errors } = sf.read();
    if (errors.size) {
      markErrors(form, "payload", errors);
      show(st, "error", "Fix the payload fields marked above.");
      return;
    }
    const decision = submitter?.getAttribute("name") === "reject" ? Decision.REJECT : Decision.APPROVE;
    show(st, "busy", "submitting…");
    try {
      await app.orch.submitApproval({ runId: a.runId, stepId: a.stepId, decision, payload: value, comment: comment.value.trim() });
      show(st, "ok", decision === Decision.APPROVE ? "approved" : "rejected");
      done();
    } catch (err) {
      showError(st, err, form);
    }
  });
  return form;
}

/** approvalsView is the inbox: every approval waiting for a person, oldest first. */
export const approvalsView: View = async (app, root) => {
  const st = status("inbox-status");
  const list = h("div", { "data-testid": "inbox" });
  root.append(h("section", { class: "panel", "aria-labelledby": "inbox-h" }, h("h2", { id: "inbox-h", tabindex: -1 }, "Approvals inbox"), list, st));
  const tokens = [""];
  const load = async (page: number) => {
    show(st, "busy", "loading…");
    try {
      const res = await app.orch.listPendingApprovals({ pageSize: PAGE, pageToken: tokens[page] });
      tokens[page + 1] = res.nextPageToken;
      list.replaceChildren(
        ...(res.approvals.length ? res.approvals.map((a) => approvalCard(app, a, () => void load(page))) : [empty("inbox-empty", "Nothing waiting for approval. Runs with an approval step show up here when they reach it.")]),
        h("div", { class: "row" },
          page > 0 ? h("button", { type: "button", onclick: () => void load(page - 1) }, "Previous page") : null,
          res.nextPageToken ? h("button", { type: "button", onclick: () => void load(page + 1) }, "Next page") : null),
      );
      show(st, "ok", `${res.approvals.length} waiting`);
    } catch (err) {
      showError(st, err);
    }
  };
  await load(0);
};

/** showEstimate fills box with EstimateRun's forecast of a run of blueprint: p50 and p90 of cost and duration
 * over its recent runs, or, without history, the agents' budgets that bound it. */
async function showEstimate(app: App, box: HTMLElement, blueprint: string): Promise<void> {
  box.textContent = "estimating…";
  try {
    const est = await app.orch.estimateRun({ blueprint });
    const t = est.total;
    if (!t || t.noHistory) {
      const bounds = est.steps.filter((s) => s.budget).map((s) => {
        const b = s.budget!;
        const cost = b.maxCost ? fmtMoney(b.maxCost) : "no cost limit";
        return `${s.stepId} (${b.agent}): ${cost}, ${b.maxDuration ? fmtMs(Number(b.maxDuration.seconds) * 1000) : "no time limit"}`;
      });
      box.textContent = `Estimate: no history for v${est.blueprintVersion} yet.` + (bounds.length ? ` Bounded by the agents' budgets: ${bounds.join("; ")}.` : "");
      return;
    }
    const d = (x?: { seconds: bigint; nanos: number }) => (x ? fmtMs(Number(x.seconds) * 1000 + x.nanos / 1e6) : "?");
    box.textContent = `Estimate from the last ${t.sampleSize} runs of v${est.blueprintVersion}: cost p50 ${fmtMoney(t.costP50)}, p90 ${fmtMoney(t.costP90)}; duration p50 ${d(t.durationP50)}, p90 ${d(t.durationP90)}.`;
  } catch (err) {
    box.textContent = `Estimate unavailable: ${err instanceof Error ? err.message : String(err)}`;
  }
}
