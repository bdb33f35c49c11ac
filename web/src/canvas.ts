// The blueprint graph: GenerateCanvas's laid-out nodes, edges and groups drawn as SVG. Nodes are coloured by
// kind, and by step state when a run is shown (data-state on each node); they can be focused with Tab, chosen
// with Enter or a click, and dragged; edited() gives the canvas with the moved positions, which SaveCanvas stores
// as a new blueprint version.

import { clone } from "@bufbuild/protobuf";
import { CanvasSchema, type Canvas } from "../../gen/ts/loom/orchestrator/v1/orchestrator_pb";
import { s } from "./dom";

export interface CanvasView {
  svg: SVGSVGElement;
  /** setState colours a node by step state ("pending", "running", "waiting", "succeeded", "failed", "skipped"). */
  setState(stepId: string, state: string): void;
  /** moved reports whether a node has been dragged since the canvas was drawn. */
  moved(): boolean;
  /** edited is the canvas with every node where it now is. */
  edited(): Canvas;
  /** onMove is called after each drag. */
  onMove?: () => void;
}

const PAD = 16;

export function drawCanvas(canvas: Canvas, onSelect?: (stepId: string) => void): CanvasView {
  const w = canvas.width + PAD * 2;
  const hgt = canvas.height + PAD * 2;
  const svg = s("svg", {
    class: "canvas",
    "data-testid": "canvas",
    viewBox: `${-PAD} ${-PAD} ${w} ${hgt}`,
    width: w,
    height: hgt,
    role: "group",
    "aria-label": `workflow graph: ${canvas.nodes.length} steps, ${canvas.edges.length} dependencies`,
  }) as SVGSVGElement;
  // Set through the CSSOM: the page's Content-Security-Policy refuses inline style attributes.
  svg.style.minWidth = `${Math.min(w, 560)}px`;
  svg.append(
    s("defs", null, s("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" }, s("path", { d: "M0 0L10 5L0 10z", class: "arrowhead" }))),
  );
  for (const g of canvas.groups) {
    svg.append(
      s("g", { class: "group", "data-testid": "canvas-group", "data-id": g.id },
        s("rect", { x: g.x, y: g.y, width: g.width, height: g.height, rx: 10 }),
        s("text", { x: g.x + 6, y: g.y + 12, class: "group-label" }, g.id)),
    );
  }
  const pos = new Map(canvas.nodes.map((n) => [n.id, { x: n.x, y: n.y, w: n.width, h: n.height }]));
  const edgeEls: { from: string; to: string; path: SVGElement; label?: SVGElement }[] = [];
  for (const e of canvas.edges) {
    const pts = e.points.length ? e.points : straight(pos.get(e.from), pos.get(e.to));
    const path = s("polyline", { points: pts.map((p) => `${p.x},${p.y}`).join(" "), class: "edge", "marker-end": "url(#arrow)" });
    const g = s("g", { "data-testid": "canvas-edge", "data-id": e.id, "data-from": e.from, "data-to": e.to }, path);
    let label: SVGElement | undefined;
    if (e.label && pts.length) {
      const mid = pts[Math.floor(pts.length / 2)];
      label = s("text", { x: mid.x, y: mid.y - 4, class: "edge-label" }, e.label);
      g.append(label);
    }
    edgeEls.push({ from: e.from, to: e.to, path, label });
    svg.append(g);
  }
  const nodes = new Map<string, SVGElement>();
  let dragged = false;
  const view: CanvasView = {
    svg,
    setState(stepId, state) {
      const g = nodes.get(stepId);
      if (!g) return;
      g.dataset.state = state;
      // The state is written on the node too, so it is not shown by colour alone (and is part of its name).
      g.querySelector(".node-kind")!.textContent = `${g.dataset.kind} · ${state}`;
    },
    moved: () => dragged,
    edited() {
      const out = clone(CanvasSchema, canvas);
      for (const n of out.nodes) {
        const p = pos.get(n.id);
        if (p) [n.x, n.y] = [Math.round(p.x), Math.round(p.y)];
      }
      return out;
    },
  };
  for (const n of canvas.nodes) {
    const g = s("g", {
      class: `node kind-${n.kind}`,
      "data-testid": "canvas-node",
      "data-id": n.id,
      "data-kind": n.kind,
      "data-label": clip(n.label || n.id, n.width),
      "data-state": "",
      transform: `translate(${n.x},${n.y})`,
      tabindex: 0,
      role: "button",
    },
      s("rect", { width: n.width, height: n.height, rx: 6 }),
      s("text", { x: 10, y: n.height / 2 - 3, class: "node-label" }, clip(n.label || n.id, n.width)),
      s("text", { x: 10, y: n.height / 2 + 12, class: "node-kind" }, n.kind),
    );
    g.addEventListener("keydown", (ev) => {
      if ((ev as KeyboardEvent).key === "Enter" || (ev as KeyboardEvent).key === " ") {
        ev.preventDefault();
        onSelect?.(n.id);
      }
    });
    drag(svg, g, n.id, pos, edgeEls, () => onSelect?.(n.id), () => {
      dragged = true;
      view.onMove?.();
    });
    nodes.set(n.id, g);
    svg.append(g);
  }
  return view;
}

function clip(t: string, width: number): string {
  const max = Math.max(4, Math.floor((width - 16) / 7));
  return t.length > max ? t.slice(0, max - 1) + "…" : t;
}

type Box = { x: number; y: number; w: number; h: number };

function straight(a?: Box, b?: Box): { x: number; y: number }[] {
  if (!a || !b) return [];
  return [{ x: a.x + a.w, y: a.y + a.h / 2 }, { x: b.x, y: b.y + b.h / 2 }];
}

/** drag moves a node with the pointer and re-routes its edges straight; a press without a move is a click. */
function drag(svg: SVGSVGElement, g: SVGElement, id: string, pos: Map<string, Box>, edges: { from: string; to: string; path: SVGElement; label?: SVGElement }[], click: () => void, done: () => void): void {
  let start: { px: number; py: number; x: number; y: number } | null = null;
  let moved = false;
  const scale = () => {
    const r = svg.getBoundingClientRect();
    const vb = svg.viewBox.baseVal;
    return r.width ? vb.width / r.width : 1;
  };
  g.addEventListener("pointerdown", (ev) => {
    const e = ev as PointerEvent;
    const p = pos.get(id)!;
    start = { px: e.clientX, py: e.clientY, x: p.x, y: p.y };
    moved = false;
    g.setPointerCapture?.(e.pointerId);
  });
  g.addEventListener("pointermove", (ev) => {
    if (!start) return;
    const e = ev as PointerEvent;
    const k = scale();
    const dx = (e.clientX - start.px) * k;
    const dy = (e.clientY - start.py) * k;
    if (!moved && Math.hypot(dx, dy) < 3) return;
    moved = true;
    const p = pos.get(id)!;
    p.x = start.x + dx;
    p.y = start.y + dy;
    g.setAttribute("transform", `translate(${p.x},${p.y})`);
    for (const edge of edges) {
      if (edge.from !== id && edge.to !== id) continue;
      const pts = straight(pos.get(edge.from), pos.get(edge.to));
      edge.path.setAttribute("points", pts.map((q) => `${q.x},${q.y}`).join(" "));
      if (edge.label) {
        edge.label.setAttribute("x", String((pts[0].x + pts[1].x) / 2));
        edge.label.setAttribute("y", String((pts[0].y + pts[1].y) / 2 - 4));
      }
    }
  });
  const end = () => {
    if (start && !moved) click();
    if (start && moved) done();
    start = null;
  };
  g.addEventListener("pointerup", end);
  g.addEventListener("pointercancel", () => (start = null));
}
