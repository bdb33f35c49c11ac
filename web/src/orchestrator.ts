// The Orchestrator panel: list blueprints and validate a pasted YAML blueprint, showing each error with its
// path, line and column.

import { createClient, type Transport } from "@connectrpc/connect";
import { OrchestratorService } from "../../gen/ts/loom/orchestrator/v1/orchestrator_pb";
import { byTestId, field, item, onSubmit, show, showError } from "./status";

export function mountOrchestrator(transport: Transport): void {
  const client = createClient(OrchestratorService, transport);
  const list = byTestId("bp-list");
  const listStatus = byTestId("bp-list-status");

  const refresh = async () => {
    show(listStatus, "busy", "loading...");
    try {
      const res = await client.listBlueprints({ pageSize: 100 });
      list.replaceChildren(
        ...res.blueprints.map((b) => {
          const li = item("bp-item", `${b.name} v${b.version} (${b.steps.length} steps)`);
          li.dataset.name = b.name;
          return li;
        }),
      );
      show(listStatus, "ok", `${res.blueprints.length} blueprint(s)`);
    } catch (err) {
      showError(listStatus, err);
    }
  };
  byTestId("bp-refresh").addEventListener("click", () => void refresh());

  const form = byTestId<HTMLFormElement>("bp-form");
  const status = byTestId("bp-status");
  const errors = byTestId("bp-errors");
  onSubmit(form, async () => {
    show(status, "busy", "validating...");
    errors.replaceChildren();
    try {
      const res = await client.validateBlueprint({ source: { source: { case: "yaml", value: field(form, "yaml") } } });
      errors.replaceChildren(
        ...res.errors.map((e) => {
          const where = e.line > 0 ? `${e.line}:${e.column}` : "-";
          const li = item("bp-error", `${e.path || "(document)"} [${where}]: ${e.message}`);
          li.dataset.path = e.path;
          li.dataset.line = String(e.line);
          li.dataset.column = String(e.column);
          return li;
        }),
      );
      if (res.errors.length === 0) {
        show(status, "ok", "valid");
      } else {
        show(status, "error", `${res.errors.length} error(s)`);
      }
    } catch (err) {
      showError(status, err);
    }
  });

  void refresh();
}
