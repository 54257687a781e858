// One labelled slider (and a number box for exact values) per instruction line on the nodes that take
// per-line strengths (strength_logic.js SLIDER_NODES). The `strengths` text widget stays the single source
// of truth and the only thing saved: the sliders are a DOM widget that never serialises, so saved
// workflows and the API prompt keep the "1, 0.5, 0" text. The lines come from the Kontext
// Multi-Instruction Encode upstream (followed through ReferenceLatent, FluxGuidance, reroutes, ...).
// A DOM widget, so it shows in the LiteGraph canvas and in the Vue node renderer alike.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { addStyleOnce, el } from "./dom_util.js";
import * as L from "./strength_logic.js";

const ROW_HEIGHT = 26;
const STEP = 0.05;
const MIN_WIDTH = 360; // room for a 24-character label, the slider and the number box // the slider's step; the number box takes any value in range

const STYLE = `
.kontext-strengths { display: flex; flex-direction: column; gap: 2px; width: 100%; box-sizing: border-box;
  padding: 2px 4px; font: 12px sans-serif; color: var(--input-text, #ddd); }
.kontext-strengths .kss-row { display: flex; align-items: center; gap: 6px; height: ${ROW_HEIGHT - 2}px; }
.kontext-strengths .kss-label { flex: 0 0 11.5em; max-width: 45%; overflow: hidden; white-space: nowrap; text-overflow: ellipsis; }
.kontext-strengths .kss-slider { flex: 1 1 auto; min-width: 40px; margin: 0; }
.kontext-strengths .kss-number { flex: 0 0 54px; width: 54px; box-sizing: border-box; font: inherit;
  color: inherit; background: var(--comfy-input-bg, #222); border: 1px solid var(--border-color, #555);
  border-radius: 4px; padding: 1px 3px; }
.kontext-strengths .kss-note { opacity: 0.8; color: var(--error-text, #f88); font-size: 11px; height: ${ROW_HEIGHT - 6}px; }
`;

/** The node linked into input `index` of `node` (in its own graph), or null. */
function originOf(node, index) {
  const id = node.inputs?.[index]?.link;
  if (id == null || !node.graph) return null;
  const links = node.graph.links;
  const link = node.graph.getLink?.(id) ?? links?.get?.(id) ?? links?.[id];
  return link ? node.graph.getNodeById(link.origin_id) ?? null : null;
}

const controllers = new Set();

/** The sliders of one node: builds the rows, writes the text when a slider moves, follows the lines. */
function createController(node, spec) {
  const text = node.widgets.find((w) => w.name === spec.widget);
  const rows = el("div", { className: "kss-rows" });
  const note = el("div", { className: "kss-note" });
  const root = el("div", { className: "kontext-strengths" }, [rows, note]);
  let view = null;
  let lines; // undefined: not synced yet; null: no encoder upstream
  let shape = "";
  let shownText = null;

  function writeText(value) {
    if (text.value === value) return;
    text.value = value;
    text.callback?.(value, app.canvas, node);
    node.setDirtyCanvas?.(true, true);
    app.extensionManager?.workflow?.activeWorkflow?.changeTracker?.checkState?.();
  }

  function setValue(index, raw) {
    const value = L.clamp(raw, spec.min, spec.max);
    writeText(L.textForSlider(view, index, value));
    render();
  }

  function buildRow(i) {
    const slider = el("input", { className: "kss-slider", type: "range", min: spec.min, max: spec.max, step: STEP });
    const number = el("input", { className: "kss-number", type: "number", min: spec.min, max: spec.max, step: "any" });
    const label = el("span", { className: "kss-label" });
    slider.addEventListener("input", () => setValue(i, Number(slider.value)));
    number.addEventListener("change", () => {
      if (number.value !== "" && Number.isFinite(Number(number.value))) setValue(i, Number(number.value));
      else render();
    });
    for (const target of [slider, number]) {
      // the canvas would start a node drag from a press here, and take the keys as shortcuts
      for (const type of ["pointerdown", "mousedown", "keydown", "wheel"]) {
        target.addEventListener(type, (e) => e.stopPropagation());
      }
    }
    return el("div", { className: "kss-row" }, [label, slider, number]);
  }

  function render() {
    shownText = text.value;
    view = L.slidersFor(lines ?? null, text.value, spec.single);
    const nextShape = `${view.mode}:${view.labels.length}:${Boolean(view.note)}`;
    if (nextShape !== shape) {
      rows.replaceChildren(...view.labels.map((_, i) => buildRow(i)));
      shape = nextShape;
      fitNode();
    }
    view.labels.forEach((labelText, i) => {
      const [label, slider, number] = rows.children[i].children;
      label.textContent = labelText;
      label.title = view.titles[i];
      const shown = L.formatNumber(view.values[i]);
      if (slider.value !== String(L.clamp(view.values[i], spec.min, spec.max))) slider.value = String(view.values[i]);
      slider.setAttribute("aria-label", view.titles[i] || labelText);
      if (document.activeElement !== number && number.value !== shown) number.value = shown;
    });
    note.textContent = view.note;
    note.style.display = view.note ? "" : "none";
    root.dataset.mode = view.mode;
  }

  function height() {
    return 4 + ROW_HEIGHT * Math.max(1, rows.children.length) + (note.style.display === "none" ? 0 : ROW_HEIGHT);
  }

  function fitNode() {
    // the Vue node renderer sizes a node to its content; the canvas needs the new height
    if (!node.computeSize || !node.setSize || globalThis.LiteGraph?.vueNodesMode) return;
    note.style.display = view?.note ? "" : "none";
    const [, minHeight] = node.computeSize();
    node.setSize([node.size[0], minHeight]);
    node.setDirtyCanvas?.(true, true);
  }

  /** Follows the upstream lines: when they change (lines added, removed, edited, reordered) the values
   *  follow their lines and the text is rewritten; a text that is not the last one seen just re-renders. */
  function sync() {
    const now = L.upstreamLines(node, originOf);
    if (lines && now && JSON.stringify(lines) !== JSON.stringify(now)) {
      const next = L.textForNewLines(lines, now, text.value, spec.single);
      lines = now;
      if (next !== null) writeText(next);
    } else {
      lines = now; // first sight (load), or the encoder (dis)connected: the text stays as saved
    }
    render();
  }

  const callback = text.callback; // the front-end calls it after the user edits the text
  text.callback = function () {
    const result = callback?.apply(this, arguments);
    syncSoon();
    return result;
  };

  /** The text changed by other means (undo, a script): re-render when it is not what is shown. */
  function refresh() {
    if (view && text.value !== shownText) render();
  }

  return { element: root, sync, height, refresh };
}

let scheduled = false;
function syncSoon() {
  if (scheduled) return;
  scheduled = true;
  setTimeout(() => {
    scheduled = false;
    for (const controller of controllers) controller.sync();
  }, 0);
}

addStyleOnce("kontext-strengths-style", STYLE);
// typing in the encoder's lines or in the strengths text (both renderers), and any change the front-end's
// change tracker sees (links, pasted nodes, undo)
document.addEventListener("input", syncSoon, true);
document.addEventListener("change", syncSoon, true);
api.addEventListener("graphChanged", syncSoon);

app.registerExtension({
  name: "KontextSliders.StrengthSliders",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    const spec = L.SLIDER_NODES[nodeData.name];
    if (!spec) return;

    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      const controller = createController(this, spec);
      this.kontextStrengths = controller;
      const widget = this.addDOMWidget("strength_sliders", "kontext_strength_sliders", controller.element, {
        serialize: false, // the strengths text is what the workflow and the prompt keep
        hideOnZoom: false,
        getMinHeight: () => controller.height(),
        getMaxHeight: () => controller.height(),
      });
      widget.serialize = false; // the workflow's widgets_values reads this one, the prompt the option
      this.setSize([Math.max(this.size[0], MIN_WIDTH), this.size[1]]);
      controllers.add(controller);
      controller.sync();
      return result;
    };

    const onConnectionsChange = nodeType.prototype.onConnectionsChange;
    nodeType.prototype.onConnectionsChange = function () {
      const result = onConnectionsChange?.apply(this, arguments);
      syncSoon();
      return result;
    };

    const onConfigure = nodeType.prototype.onConfigure;
    nodeType.prototype.onConfigure = function () {
      const result = onConfigure?.apply(this, arguments);
      syncSoon(); // once the whole graph (the encoder upstream too) is configured
      return result;
    };

    const onDrawForeground = nodeType.prototype.onDrawForeground;
    nodeType.prototype.onDrawForeground = function () {
      this.kontextStrengths?.refresh(); // classic canvas: each frame compares one string
      return onDrawForeground?.apply(this, arguments);
    };

    const onRemoved = nodeType.prototype.onRemoved;
    nodeType.prototype.onRemoved = function () {
      controllers.delete(this.kontextStrengths);
      return onRemoved?.apply(this, arguments);
    };
  },
  afterConfigureGraph() {
    syncSoon();
  },
});
