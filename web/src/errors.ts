// Errors in plain words. Every RPC failure is shown as "<connect code>: <message>" (the way the Connect protocol
// spells codes), and InvalidArgument field violations from protovalidate are also put next to the form control
// that holds the field (controls carry data-field="namespace.name" and so on).

import { Code, ConnectError } from "@connectrpc/connect";
import { ViolationsSchema, type FieldPath } from "../../gen/ts/buf/validate/validate_pb";
import { h, show, type State } from "./dom";

/** codeName returns the Connect protocol's name for code, for example "invalid_argument". */
export function codeName(code: Code): string {
  const name = Code[code] ?? "unknown";
  return name.replace(/[A-Z]/g, (c, i: number) => (i > 0 ? "_" : "") + c.toLowerCase());
}

/** A field violation: the request field's path and what is wrong with it. */
export interface FieldViolation {
  field: string;
  message: string;
}

/** fieldPath spells a protovalidate FieldPath as "records[0].metadata[\"k\"]". */
export function fieldPath(p?: FieldPath): string {
  if (!p) return "";
  let out = "";
  for (const e of p.elements) {
    out += (out ? "." : "") + e.fieldName;
    switch (e.subscript.case) {
      case "index":
        out += `[${e.subscript.value}]`;
        break;
      case "stringKey":
        out += `["${e.subscript.value}"]`;
        break;
      case "intKey":
      case "uintKey":
        out += `[${e.subscript.value}]`;
        break;
      case "boolKey":
        out += `[${e.subscript.value}]`;
        break;
    }
  }
  return out;
}

/** The field path an InvalidArgument message starts with, as the services' rules write it: "agent.tools[1].url: …". */
const FIELD_FIRST = /^([a-z_][a-z0-9_]*(?:\[[^\]\s]*\])*(?:\.[a-z_][a-z0-9_]*(?:\[[^\]\s]*\])*)*): (.+)$/s;

/**
 * violations returns the field violations an error carries: protovalidate's details, or, for an InvalidArgument
 * from a service's own rules (which name the field first in the message and carry no details), that one field.
 * Empty for other errors.
 */
export function violations(err: unknown): FieldViolation[] {
  const ce = ConnectError.from(err);
  const out: FieldViolation[] = [];
  for (const v of ce.findDetails(ViolationsSchema)) {
    for (const x of v.violations) out.push({ field: fieldPath(x.field), message: x.message });
  }
  if (!out.length && ce.code === Code.InvalidArgument) {
    const m = FIELD_FIRST.exec(ce.rawMessage);
    if (m) out.push({ field: m[1], message: m[2] });
  }
  return out;
}

/** Plain words for the codes people meet most, before the server's own message. */
const HINTS: Partial<Record<Code, string>> = {
  [Code.Unauthenticated]: "Sign in with an API key or token (top right).",
  [Code.PermissionDenied]: "Your role does not allow this.",
  [Code.Unavailable]: "The server could not be reached; try again.",
  [Code.ResourceExhausted]: "Too many requests or too large; wait a moment.",
};

/** describe turns any thrown value into a state and a message for a status line. */
export function describe(err: unknown): { state: State; text: string; code: Code } {
  const ce = ConnectError.from(err);
  if (ce.code === Code.Unimplemented) {
    return { state: "unimplemented", text: `not built yet (unimplemented: ${ce.rawMessage})`, code: ce.code };
  }
  const hint = HINTS[ce.code];
  return { state: "error", text: `${codeName(ce.code)}: ${ce.rawMessage}${hint ? `\n${hint}` : ""}`, code: ce.code };
}

/** clearFieldErrors removes the field messages of an earlier failure from a form. */
export function clearFieldErrors(root: ParentNode): void {
  root.querySelectorAll(".field-error").forEach((e) => e.remove());
  root.querySelectorAll("[aria-invalid]").forEach((e) => {
    e.removeAttribute("aria-invalid");
    e.removeAttribute("aria-describedby");
  });
}

let n = 0;

/**
 * showError sets a status line from a thrown value, and puts each field violation next to the control in root
 * whose data-field names it (or a prefix of it; data-field may list several paths, space-separated). Violations
 * that match no control stay in the status line.
 */
export function showError(statusEl: HTMLElement, err: unknown, root?: ParentNode): void {
  const d = describe(err);
  show(statusEl, d.state, d.text);
  console.warn(d.text);
  if (!root) return;
  clearFieldErrors(root);
  for (const v of violations(err)) {
    const control = findControl(root, v.field);
    if (!control) continue;
    const id = `ferr-${++n}`;
    control.setAttribute("aria-invalid", "true");
    control.setAttribute("aria-describedby", id);
    const msg = h("span", { class: "field-error", id, "data-testid": "field-error", "data-field": v.field }, `${v.field}: ${v.message}`);
    (control.closest("label") ?? control).after(msg);
  }
}

/**
 * findControl finds the control for a violation's path, or for the nearest enclosing field that has one; each
 * candidate is tried as it is and without list subscripts, so "agent.tools[2].delegate.agent" finds the control
 * marked "agent.tools.delegate" (one control edits every item of a list).
 */
function findControl(root: ParentNode, path: string): HTMLElement | null {
  for (let p = path; p; p = p.replace(/(\.[^.]*|\[[^\]]*\])$/, "")) {
    for (const q of new Set([p, p.replace(/\[[^\]]*\]/g, "")])) {
      const el = root.querySelector<HTMLElement>(`[data-field~="${CSS.escape(q)}"]`);
      if (el) return el;
    }
    if (!/[.[]/.test(p)) break;
  }
  return null;
}
