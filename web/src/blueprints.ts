// Blueprints: the list, a blueprint's versions, its YAML, its graph (GenerateCanvas as SVG), and an editor that
// validates with ValidateBlueprint (errors at their line and column) and saves a new version.

import { Code, ConnectError } from "@connectrpc/connect";
import type { ValidationError } from "../../gen/ts/loom/orchestrator/v1/orchestrator_pb";
import type { App, View } from "./app";
import { drawCanvas } from "./canvas";
import { empty, fmtTime, h, onSubmit, show, status, fill } from "./dom";
import { showError } from "./errors";
import { blueprintYAML, highlight, stepDefinition } from "./yaml";

const PAGE = 20;

export const blueprintsView: View = async (app, root, params) => {
  const listBox = h("div", { class: "list-box" });
  const side = h("section", { class: "panel side", "aria-labelledby": "bp-h" },
    h("h2", { id: "bp-h", tabindex: -1 }, "Blueprints"),
    listBox,
  );
  const detail = h("div", { class: "detail" });
  root.append(h("div", { class: "split" }, side, detail));
  void list(app, listBox, "");
  if (params[0]) await showBlueprint(app, detail, params[0], Number(params[1] ?? 0));
  else detail.append(newBlueprint(app));
};

async function list(app: App, box: HTMLElement, token: string): Promise<void> {
  const st = status("bp-list-status");
  box.replaceChildren(st);
  show(st, "busy", "loading…");
  try {
    const res = await app.orch.listBlueprints({ pageSize: PAGE, pageToken: token });
    const ul = h("ul", { class: "items", "data-testid": "bp-list" },
      ...res.blueprints.map((b) => h("li", { "data-testid": "bp-item", "data-name": b.name },
        h("a", { href: `#/blueprints/${encodeURIComponent(b.name)}` }, b.name),
        h("small", null, ` v${b.version} · ${b.steps.length} steps`))),
    );
    fill(box, 
      res.blueprints.length ? ul : empty("bp-empty", "No blueprints yet. Paste a YAML blueprint into the form and press Create."),
      res.nextPageToken ? h("button", { type: "button", "data-testid": "bp-more", onclick: () => void list(app, box, res.nextPageToken) }, "Next page") : null,
      token ? h("button", { type: "button", onclick: () => void list(app, box, "") }, "First page") : null,
      st,
    );
    show(st, "ok", `${res.blueprints.length} blueprint(s)`);
  } catch (err) {
    showError(st, err);
  }
}

/** errorList renders validation errors; clicking one puts the editor's caret at its line and column. */
function errorList(errors: ValidationError[], editor?: HTMLTextAreaElement): HTMLElement {
  return h("ul", { class: "errors", "data-testid": "bp-errors" },
    ...errors.map((e) => {
      const where = e.line > 0 ? `${e.line}:${e.column}` : "-";
      const li = h("li", { "data-testid": "bp-error", "data-path": e.path, "data-line": e.line, "data-column": e.column },
        editor && e.line > 0
          ? h("button", { type: "button", class: "link", onclick: () => caret(editor, e.line, e.column) }, `line ${e.line}, column ${e.column}`)
          : h("span", null, where === "-" ? "(no position)" : `line ${where}`),
        " ", h("code", null, e.path || "(document)"), `: ${e.message}`,
      );
      return li;
    }),
  );
}

function caret(ta: HTMLTextAreaElement, line: number, col: number): void {
  const lines = ta.value.split("\n");
  let off = 0;
  for (let i = 0; i < line - 1 && i < lines.length; i++) off += lines[i].length + 1;
  off += Math.max(0, col - 1);
  ta.focus();
  ta.setSelectionRange(off, off);
}

/** editor is a YAML textarea with a Validate button and a save action. */
function editor(app: App, initial: string, save: ((yaml: string) => Promise<void>) | null, saveLabel: string): HTMLElement {
  const ta = h("textarea", { name: "yaml", rows: 18, spellcheck: "false", "data-testid": "bp-yaml", "data-field": "source.yaml", "aria-label": "blueprint YAML", value: initial });
  const st = status("bp-status");
  const errs = h("div");
  const form = h("form", { class: "editor", "data-testid": "bp-form" },
    ta,
    h("div", { class: "row" },
      h("button", { type: "submit", name: "validate", "data-testid": "bp-validate" }, "Validate"),
      save ? h("button", { type: "submit", name: "save", "data-testid": "bp-save" }, saveLabel) : null,
    ),
    st, errs,
  );
  onSubmit(form, async (submitter) => {
    const saving = submitter?.getAttribute("name") === "save";
    show(st, "busy", "validating…");
    errs.replaceChildren();
    try {
      const res = await app.orch.validateBlueprint({ source: { source: { case: "yaml", value: ta.value } } });
      if (res.errors.length) {
        errs.append(errorList(res.errors, ta));
        show(st, "error", `${res.errors.length} error(s): fix them, then validate again`);
        return;
      }
      if (!saving || !save) {
        show(st, "ok", "valid");
        return;
      }
      show(st, "busy", "saving…");
      await save(ta.value);
      show(st, "ok", "saved");
    } catch (err) {
      showError(st, err, form);
    }
  });
  return form;
}

function newBlueprint(app: App): HTMLElement {
  const sample = "name: hello\ndescription: Wait a moment, then finish.\nsteps:\n  - id: pause\n    delay: {duration: 1s}\n";
  const save = app.can("writer")
    ? async (yaml: string) => {
        const res = await app.orch.createBlueprint({ source: { source: { case: "yaml", value: yaml } } });
        app.go(`#/blueprints/${encodeURIComponent(res.blueprint!.name)}`);
      }
    : null;
  return h("section", { class: "panel", "aria-labelledby": "bp-new-h" },
    h("h3", { id: "bp-new-h" }, save ? "New blueprint" : "Validate a blueprint"),
    save ? null : h("p", { class: "note", "data-testid": "readonly-note" }, "Your role can read and validate blueprints, not create them."),
    editor(app, sample, save, "Create"),
  );
}

async function showBlueprint(app: App, box: HTMLElement, name: string, version: number): Promise<void> {
  const st = status("bp-detail-status");
  box.replaceChildren(st);
  show(st, "busy", "loading…");
  let bp;
  let latest;
  try {
    latest = (await app.orch.getBlueprint({ name })).blueprint!;
    bp = version && BigInt(version) !== latest.version ? (await app.orch.getBlueprint({ name, version: BigInt(version) })).blueprint! : latest;
  } catch (err) {
    showError(st, err);
    if (ConnectError.from(err).code === Code.NotFound) box.append(empty("bp-missing", `No blueprint "${name}". Pick one from the list.`));
    return;
  }
  show(st, "", "");
  const isLatest = bp.version === latest.version;
  const yaml = blueprintYAML(bp);
  const versions = h("ol", { class: "versions", "data-testid": "bp-versions", reversed: true },
    ...Array.from({ length: Math.min(Number(latest.version), 50) }, (_, i) => {
      const v = Number(latest!.version) - i;
      return h("li", { "data-version": v }, v === Number(bp!.version)
        ? h("b", { "aria-current": "true" }, `v${v}`)
        : h("a", { href: `#/blueprints/${encodeURIComponent(name)}/${v}` }, `v${v}`),
        h("small", { class: "meta", "data-testid": "bp-version-time" }));
    }),
  );
  // When each of the latest versions was saved (one GetBlueprint per version; older ones are listed without).
  void Promise.all([...versions.children].slice(0, 10).map(async (li) => {
    const v = BigInt((li as HTMLElement).dataset.version!);
    const got = v === bp!.version ? bp! : v === latest!.version ? latest! : (await app.orch.getBlueprint({ name, version: v }).catch(() => null))?.blueprint;
    if (got) li.querySelector("small")!.textContent = ` ${fmtTime(got.createTime)}`;
  }));
  const canvasBox = h("div", { class: "canvas-box", "data-testid": "canvas-box" }, status("canvas-status"));
  const stepInfo = h("div", { class: "step-info", "data-testid": "step-info", "aria-live": "polite" });
  const actions = h("div", { class: "row" },
    h("a", { class: "button", href: `#/runs/new/${encodeURIComponent(name)}`, "data-testid": "bp-start-run", hidden: !app.can("writer") }, "Start a run"),
    app.can("writer") ? h("button", {
      type: "button", class: "danger", "data-testid": "bp-delete",
      onclick: async () => {
        if (!confirm(`Delete blueprint ${name} and all its versions? Runs stay readable.`)) return;
        try {
          await app.orch.deleteBlueprint({ name });
          app.go("#/blueprints");
        } catch (err) {
          showError(st, err);
        }
      },
    }, "Delete") : null,
  );
  const save = app.can("writer")
    ? async (src: string) => {
        const res = await app.orch.updateBlueprint({ name, source: { source: { case: "yaml", value: src } }, expectedVersion: latest!.version });
        app.go(`#/blueprints/${encodeURIComponent(name)}/${res.blueprint!.version}`);
      }
    : null;
  box.append(
    h("section", { class: "panel", "aria-labelledby": "bp-title" },
      h("h3", { id: "bp-title", "data-testid": "bp-title" }, `${bp.name} v${bp.version}`, isLatest ? h("span", { class: "badge" }, "latest") : null),
      bp.description ? h("p", null, bp.description) : null,
      h("p", { class: "meta" }, `created ${fmtTime(bp.createTime)} · ${bp.steps.length} steps`),
      actions,
      h("h4", null, "Versions"), versions,
    ),
    h("section", { class: "panel", "aria-labelledby": "canvas-h" }, h("h3", { id: "canvas-h" }, "Graph"), canvasBox, stepInfo),
    h("section", { class: "panel", "aria-labelledby": "yaml-h" }, h("h3", { id: "yaml-h" }, "YAML"), highlight(yaml)),
    h("section", { class: "panel", "aria-labelledby": "edit-h" },
      h("h3", { id: "edit-h" }, save ? `Edit (saves v${latest.version + 1n})` : "Edit"),
      save ? null : h("p", { class: "note", "data-testid": "readonly-note" }, "Your role can read blueprints, not change them."),
      editor(app, yaml, save, "Save as new version"),
    ),
  );
  const cst = canvasBox.firstElementChild as HTMLElement;
  show(cst, "busy", "laying out…");
  try {
    const res = await app.orch.generateCanvas({ target: { case: "ref", value: { name, version: bp.version } } });
    const view = drawCanvas(res.canvas!, (id) => {
      const step = bp!.steps.find((x) => x.id === id);
      stepInfo.replaceChildren(h("h4", null, `Step ${id}`), h("pre", { class: "json" }, step ? stepDefinition(step) : ""));
    });
    canvasBox.replaceChildren(view.svg);
    if (app.can("writer") && isLatest) {
      // Dragged positions are saved as a new version (SaveCanvas keeps the steps and stores the layout).
      const lst = status("canvas-save-status");
      const saveLayout = h("button", {
        type: "button", "data-testid": "canvas-save", disabled: true,
        onclick: async () => {
          show(lst, "busy", "saving the layout…");
          try {
            const saved = await app.orch.saveCanvas({ name, canvas: view.edited(), expectedVersion: latest!.version });
            app.go(`#/blueprints/${encodeURIComponent(name)}/${saved.blueprint!.version}`);
          } catch (err) {
            showError(lst, err);
          }
        },
      }, `Save layout as v${latest.version + 1n}`) as HTMLButtonElement;
      view.onMove = () => (saveLayout.disabled = false);
      canvasBox.append(h("div", { class: "row" }, saveLayout, lst));
    }
  } catch (err) {
    showError(cst, err);
  }
}
