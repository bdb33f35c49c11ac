// Forms generated from JSON Schema (a blueprint's input_schema, an approval's payload_schema), with the checks
// people need before the server's: required properties, types, enums, numeric bounds, string lengths and
// patterns. Anything beyond a flat object of scalars is edited as JSON. The server checks every value against the
// whole schema again; its field violations are shown at the same controls (errors.showError).

import type { JsonObject, JsonValue } from "@bufbuild/protobuf";
import { h } from "./dom";

export interface SchemaForm {
  el: HTMLElement;
  /** read returns the value, or the problems keyed by property ("" for the whole value). */
  read(): { value: JsonObject; errors: Map<string, string> };
}

type Prop = {
  type?: string; description?: string; enum?: JsonValue[]; default?: JsonValue; title?: string;
  minimum?: number; maximum?: number; minLength?: number; maxLength?: number; pattern?: string;
};

/** check returns what is wrong with a scalar value under its property's bounds, or "". */
function check(p: Prop, v: string | number): string {
  if (typeof v === "number") {
    if (p.minimum !== undefined && v < p.minimum) return `must be at least ${p.minimum}`;
    if (p.maximum !== undefined && v > p.maximum) return `must be at most ${p.maximum}`;
    return "";
  }
  const n = [...v].length; // JSON Schema counts code points
  if (p.minLength !== undefined && n < p.minLength) return `must be at least ${p.minLength} characters`;
  if (p.maxLength !== undefined && n > p.maxLength) return `must be at most ${p.maxLength} characters`;
  if (p.pattern !== undefined) {
    try {
      if (!new RegExp(p.pattern, "u").test(v)) return `must match ${p.pattern}`;
    } catch {
      // A pattern JavaScript cannot read is left to the server, which checks every payload.
    }
  }
  return "";
}

/** schemaForm builds the form for schema; field names are prefixed with prefix (data-field "<prefix>.<key>"). */
export function schemaForm(schema: JsonObject | undefined, prefix: string, testPrefix: string): SchemaForm {
  const props = (schema?.["properties"] ?? null) as Record<string, Prop> | null;
  const required = new Set(Array.isArray(schema?.["required"]) ? (schema!["required"] as string[]) : []);
  const flat = props && Object.values(props).every((p) => !p.type || ["string", "number", "integer", "boolean"].includes(p.type));
  if (!props || !flat) {
    const ta = h("textarea", { rows: 5, spellcheck: "false", "data-field": prefix, "data-testid": `${testPrefix}-json`, value: "{}" });
    const el = h("div", { class: "schema-form" }, h("label", null, h("span", { class: "lbl" }, "JSON"), ta),
      schema ? h("details", null, h("summary", null, "Schema"), h("pre", { class: "json" }, JSON.stringify(schema, null, 2))) : null);
    return {
      el,
      read() {
        const errors = new Map<string, string>();
        try {
          const v = JSON.parse(ta.value || "{}");
          if (!v || typeof v !== "object" || Array.isArray(v)) errors.set("", "must be a JSON object");
          return { value: v ?? {}, errors };
        } catch (e) {
          errors.set("", `not valid JSON: ${(e as Error).message}`);
          return { value: {}, errors };
        }
      },
    };
  }
  const controls = new Map<string, HTMLInputElement | HTMLSelectElement>();
  const el = h("div", { class: "schema-form" },
    ...Object.entries(props).map(([key, p]) => {
      const attrs = { name: key, "data-field": `${prefix}.${key}`, "data-testid": `${testPrefix}-${key}`, required: required.has(key) };
      let c: HTMLInputElement | HTMLSelectElement;
      if (p.enum) {
        c = h("select", attrs, h("option", { value: "" }, "—"), ...p.enum.map((v) => h("option", { value: JSON.stringify(v) }, String(v))));
      } else if (p.type === "boolean") {
        c = h("input", { ...attrs, type: "checkbox", checked: p.default === true });
      } else {
        c = h("input", { ...attrs, type: p.type === "number" || p.type === "integer" ? "number" : "text", step: p.type === "integer" ? 1 : "any", value: p.default === undefined ? "" : String(p.default) });
      }
      controls.set(key, c);
      return h("label", { class: p.type === "boolean" ? "check" : "" },
        h("span", { class: "lbl" }, p.title ?? key, required.has(key) ? h("abbr", { title: "required" }, " *") : null), c,
        p.description ? h("small", { class: "hint" }, p.description) : null);
    }),
  );
  return {
    el,
    read() {
      const value: JsonObject = {};
      const errors = new Map<string, string>();
      for (const [key, c] of controls) {
        const p = props[key];
        if (c instanceof HTMLInputElement && c.type === "checkbox") {
          value[key] = c.checked;
          continue;
        }
        const raw = c.value.trim();
        if (!raw) {
          if (required.has(key)) errors.set(key, "is required");
          continue;
        }
        if (p.enum) value[key] = JSON.parse(raw);
        else if (p.type === "number" || p.type === "integer") {
          const n = Number(raw);
          if (!Number.isFinite(n) || (p.type === "integer" && !Number.isInteger(n))) errors.set(key, `must be ${p.type === "integer" ? "an integer" : "a number"}`);
          else value[key] = n;
        } else value[key] = raw;
        const v = value[key];
        const bad = typeof v === "number" || typeof v === "string" ? check(p, v) : "";
        if (bad) errors.set(key, bad);
      }
      return { value, errors };
    },
  };
}

/** markErrors puts schema problems next to their controls (see errors.showError for server violations). */
export function markErrors(root: HTMLElement, prefix: string, errors: Map<string, string>): void {
  root.querySelectorAll(".field-error").forEach((e) => e.remove());
  for (const [key, msg] of errors) {
    const path = key ? `${prefix}.${key}` : prefix;
    const c = root.querySelector<HTMLElement>(`[data-field~="${CSS.escape(path)}"]`);
    const span = h("span", { class: "field-error", "data-testid": "field-error", "data-field": path, id: `fe-${path.replace(/\W/g, "_")}` }, `${key || prefix}: ${msg}`);
    if (c) {
      c.setAttribute("aria-invalid", "true");
      c.setAttribute("aria-describedby", span.id);
      (c.closest("label") ?? c).after(span);
    } else root.prepend(span);
  }
}
