// Blueprints as YAML: the server stores blueprints as messages, so the console writes one back as the YAML the
// orchestrator reads (snake_case keys, Go durations, output-only fields left out), and highlights YAML for
// reading. Strings are written as JSON strings, which YAML reads as double-quoted scalars.

import { toJson } from "@bufbuild/protobuf";
import { BlueprintSchema, type Blueprint, type Step } from "../../gen/ts/loom/orchestrator/v1/orchestrator_pb";
import { h, json } from "./dom";

type J = null | boolean | number | string | J[] | { [k: string]: J };

const PLAIN = /^[A-Za-z_][A-Za-z0-9_ .\-/]*$/;
const RESERVED = /^(true|false|null|yes|no|on|off|~|y|n)$/i;

const GO_DURATION = /^(\d+(h|ms|m|s))+$/;

function scalar(v: J): string {
  if (v === null) return "null";
  if (typeof v === "string") {
    if (GO_DURATION.test(v)) return v; // YAML reads "2h" or "1m30s" as a string

    return PLAIN.test(v) && !RESERVED.test(v) && !/\s$/.test(v) && !v.includes(": ") && !v.includes(" #") ? v : JSON.stringify(v);
  }
  return String(v);
}

function emit(v: J, indent: string, out: string[]): void {
  if (Array.isArray(v)) {
    for (const item of v) {
      if (item && typeof item === "object" && !Array.isArray(item) && Object.keys(item).length) {
        const sub: string[] = [];
        emit(item, indent + "  ", sub);
        sub[0] = indent + "- " + sub[0].slice(indent.length + 2);
        out.push(...sub);
      } else {
        out.push(`${indent}- ${inline(item)}`);
      }
    }
    return;
  }
  if (v && typeof v === "object") {
    for (const [k, x] of Object.entries(v)) {
      if (x && typeof x === "object" && (Array.isArray(x) ? x.length : Object.keys(x).length)) {
        if (Array.isArray(x) && x.every((e) => e === null || typeof e !== "object")) {
          out.push(`${indent}${k}: ${inline(x)}`);
        } else {
          out.push(`${indent}${k}:`);
          emit(x, indent + "  ", out);
        }
      } else {
        out.push(`${indent}${k}: ${inline(x)}`);
      }
    }
  }
}

function inline(v: J): string {
  if (Array.isArray(v)) return `[${v.map(inline).join(", ")}]`;
  if (v && typeof v === "object") return `{${Object.entries(v).map(([k, x]) => `${k}: ${inline(x)}`).join(", ")}}`;
  return scalar(v);
}

const DURATION_KEYS = new Set(["run_deadline", "timeout", "initial_backoff", "max_backoff", "deadline", "duration"]);

/** goDuration turns protobuf JSON's "7200s" into the Go duration people write, "2h". */
export function goDuration(v: string): string {
  const m = /^(-?)(\d+)(?:\.(\d+))?s$/.exec(v);
  if (!m) return v;
  let ms = Number(m[2]) * 1000 + Math.round(Number(`0.${m[3] ?? "0"}`) * 1000);
  if (ms === 0) return "0s";
  const parts: string[] = [];
  for (const [unit, size] of [["h", 3_600_000], ["m", 60_000], ["s", 1000], ["ms", 1]] as const) {
    const n = Math.floor(ms / size);
    if (n) parts.push(`${n}${unit}`);
    ms -= n * size;
  }
  return m[1] + parts.join("");
}

function durations(v: J, key = ""): J {
  if (typeof v === "string" && DURATION_KEYS.has(key)) return goDuration(v);
  if (Array.isArray(v)) return v.map((x) => durations(x));
  if (v && typeof v === "object") {
    // input_schema and payload_schema are JSON Schema documents: leave them as they are.
    if (key === "input_schema" || key === "payload_schema") return v;
    return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, durations(x, k)]));
  }
  return v;
}

/** stepDefinition is a step's definition as JSON for people: its kind, dependencies and the kind's fields. */
export function stepDefinition(step: Step): string {
  return json({ kind: step.kind.case, depends_on: step.dependsOn, ...(step.kind.value ? { ...step.kind.value, $typeName: undefined } : {}) });
}

/** blueprintYAML writes a blueprint as YAML the orchestrator reads back (ValidateBlueprint, UpdateBlueprint). */
export function blueprintYAML(bp: Blueprint): string {
  const j = durations(toJson(BlueprintSchema, bp, { useProtoFieldName: true }) as J) as { [k: string]: J };
  delete j.version;
  delete j.create_time;
  const order = ["name", "description", "input_schema", "run_deadline", "output", "steps"];
  const sorted: { [k: string]: J } = {};
  for (const k of order) if (k in j) sorted[k] = j[k];
  for (const k of Object.keys(j)) if (!(k in sorted)) sorted[k] = j[k];
  const out: string[] = [];
  emit(sorted, "", out);
  return out.join("\n") + "\n";
}

/** highlight renders YAML source as a <pre> of numbered lines with keys, strings, numbers and comments marked. */
export function highlight(src: string, testId = "yaml-view"): HTMLElement {
  const lines = src.replace(/\n$/, "").split("\n");
  return h(
    "pre",
    { class: "yaml", "data-testid": testId, tabindex: 0, "aria-label": "blueprint YAML" },
    ...lines.map((line, i) => h("span", { class: "ln", "data-line": i + 1 }, ...tokens(line), "\n")),
  );
}

function tokens(line: string): (Node | string)[] {
  const out: (Node | string)[] = [];
  const m = /^(\s*(?:- )*)([A-Za-z_][\w.-]*)(:)(\s|$)(.*)$/.exec(line);
  let rest = line;
  if (m) {
    out.push(m[1], h("span", { class: "tk-key" }, m[2]), m[3] + m[4]);
    rest = m[5];
  } else {
    const lead = /^(\s*(?:- )*)(.*)$/.exec(line)!;
    out.push(lead[1]);
    rest = lead[2];
  }
  const re = /("(?:[^"\\]|\\.)*"|'(?:[^']|'')*')|(#.*$)|(\b-?\d+(?:\.\d+)?(?:[a-z]+)?\b)|(\b(?:true|false|null)\b)/g;
  let last = 0;
  for (let t = re.exec(rest); t; t = re.exec(rest)) {
    if (t.index > last) out.push(rest.slice(last, t.index));
    const cls = t[1] ? "tk-str" : t[2] ? "tk-com" : t[3] ? "tk-num" : "tk-lit";
    out.push(h("span", { class: cls }, t[0]));
    last = t.index + t[0].length;
  }
  if (last < rest.length) out.push(rest.slice(last));
  return out;
}
