// Pure logic of the per-line strength sliders (no DOM, no ComfyUI): which lines the upstream encoder has,
// which sliders a node shows, how the strengths text reads and is written, and how values follow their
// lines when lines are added, removed, edited or reordered. Unit-tested with `node --test tests/web/`;
// kontext_strength_sliders.js only wires it to the front-end.

export const ENCODER = "KontextMultiInstructionEncode";
export const NEW_LINE_VALUE = 1; // a line added upstream starts as written
export const LABEL_CHARS = 24;

// The nodes that take one strength per line, and their accepted range (core/knobs/toward_pad.py
// SLIDER_RANGE, core/knobs/guidance.py GUIDANCE_RANGE, core/slideredit/weights.py STRENGTH_RANGE; a test
// reads them there). `single`: a GSTLoRA takes one value, so a text whose count differs from the lines'
// shows one slider.
export const SLIDER_NODES = {
  KontextInstructionSliders: { widget: "strengths", min: -1, max: 3, single: false },
  KontextInstructionGuidance: { widget: "strengths", min: -1, max: 3, single: false },
  SliderEditApply: { widget: "strengths", min: -1, max: 3, single: true },
};

/** One instruction per line, as core/instructions.py split_instructions: \n or \r\n, stripped, blanks dropped. */
export function splitInstructions(text) {
  return String(text ?? "").split(/\r?\n/).map((line) => line.trim()).filter((line) => line !== "");
}

// a plain decimal number, as core/instructions.py's parse_number accepts
const NUMBER = /^[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$/;

/** '1, 0.5; 2' -> [1, 0.5, 2]; a part that is not a number is NaN; '' -> []. */
export function parseStrengths(text) {
  const parts = String(text ?? "").replace(/;/g, ",").split(",").map((p) => p.trim());
  if (parts.length === 1 && parts[0] === "") return [];
  return parts.map((p) => (NUMBER.test(p) ? Number(p) : NaN));
}

/** A value as the text writes it: at most 4 decimals, no trailing zeros, never "-0" or an exponent. */
export function formatNumber(value) {
  const text = Number(value).toFixed(4).replace(/\.?0+$/, "");
  return text === "-0" || text === "" ? "0" : text;
}

export function formatStrengths(values) {
  return values.map(formatNumber).join(", ");
}

export function clamp(value, min, max) {
  return Math.min(max, Math.max(min, value));
}

/** The start of a line, as a slider's label. */
export function sliderLabel(line, chars = LABEL_CHARS) {
  return line.length <= chars ? line : `${line.slice(0, chars - 1).trimEnd()}…`;
}

/** The values for `newLines`, given `oldValues` for `oldLines`: a value follows its line's text (reordered
 *  lines keep their values; duplicates pair in order); a line whose text changed keeps the value of the
 *  unmatched old line between the same matched neighbours (an edit in place); other new lines get
 *  NEW_LINE_VALUE; values of removed lines are dropped. */
export function alignValues(oldLines, oldValues, newLines) {
  const used = new Array(oldLines.length).fill(false);
  const from = newLines.map((line) => {
    const i = oldLines.findIndex((old, k) => !used[k] && old === line);
    if (i >= 0) used[i] = true;
    return i;
  });
  for (let j = 0; j < newLines.length; j++) {
    if (from[j] >= 0) continue;
    const before = from.slice(0, j).filter((i) => i >= 0);
    const after = from.slice(j + 1).filter((i) => i >= 0);
    const low = before.length ? Math.max(...before) : -1;
    const high = after.length ? Math.min(...after) : oldLines.length;
    for (let k = low + 1; k < high; k++) {
      if (!used[k]) { used[k] = true; from[j] = k; break; }
    }
  }
  return from.map((i) => (i >= 0 && Number.isFinite(oldValues[i]) ? oldValues[i] : NEW_LINE_VALUE));
}

/** The sliders a node shows: { mode, labels, titles, values, note }.
 *  mode "lines": one per instruction line (values from the text, NEW_LINE_VALUE where it has none);
 *  "single": one slider (a GSTLoRA on SliderEdit Apply: the text's count differs from the lines');
 *  "values": no encoder found upstream, one per value in the text. `note` says what does not match. */
export function slidersFor(lines, text, single = false) {
  const parsed = parseStrengths(text);
  const bad = parsed.some((v) => !Number.isFinite(v));
  const valueOr1 = (v) => (Number.isFinite(v) ? v : NEW_LINE_VALUE);
  if (lines === null) {
    return { mode: "values", labels: parsed.map((_, i) => `value ${i + 1}`), titles: parsed.map(() => ""),
             values: parsed.map(valueOr1), note: bad ? "a value is not a number" : "" };
  }
  if (single && parsed.length !== lines.length) {
    return { mode: "single", labels: ["all lines (GSTLoRA)"], titles: ["one strength for all tokens"],
             values: [valueOr1(parsed[0])], note: parsed.length > 1 ? `${parsed.length} values, ${lines.length} lines` : "" };
  }
  let note = bad ? "a value is not a number" : "";
  if (parsed.length !== lines.length) note = `${parsed.length} value(s) for ${lines.length} line(s)`;
  return { mode: "lines", labels: lines.map((l) => sliderLabel(l)), titles: lines, values: lines.map((_, i) => valueOr1(parsed[i])),
           note };
}

/** The text to write when the upstream lines change from `oldLines` to `newLines` (both found), or null to
 *  leave it as it is: per-line values follow their lines; a single GSTLoRA value stays. */
export function textForNewLines(oldLines, newLines, text, single = false) {
  const view = slidersFor(oldLines, text, single);
  if (view.mode !== "lines") return null;
  const next = formatStrengths(alignValues(oldLines, view.values, newLines));
  return next === text ? null : next;
}

/** The text after slider `index` moved to `value` in `view` (slidersFor's result). */
export function textForSlider(view, index, value) {
  const values = view.values.slice();
  values[index] = value;
  return formatStrengths(values);
}

// ---------------------------------------------------------------- the encoder upstream

const PASS_THROUGH_TYPES = new Set(["CONDITIONING", "*"]);

/** The instruction lines of the encoder feeding `node`'s `conditioning` input, following the conditioning
 *  chain through nodes with one linked conditioning input (ReferenceLatent, FluxGuidance, reroutes, ...);
 *  null when no encoder is found. `originOf(node, inputIndex)` is the node linked into that input, or null.
 *  The encoder's `instructions` may itself come from a linked node: its first text widget is read. */
export function upstreamLines(node, originOf) {
  const seen = new Set([node]);
  let input = (node.inputs ?? []).findIndex((i) => i.name === "conditioning");
  let current = node;
  while (input >= 0) {
    const origin = originOf(current, input);
    if (!origin || seen.has(origin)) return null;
    seen.add(origin);
    if (origin.type === ENCODER) return encoderLines(origin, originOf);
    const linked = (origin.inputs ?? []).map((inp, i) => [inp, i])
      .filter(([inp, i]) => PASS_THROUGH_TYPES.has(inp.type) && originOf(origin, i));
    if (linked.length !== 1) return null; // none, or several (a combine): which one is ambiguous
    current = origin;
    input = linked[0][1];
  }
  return null;
}

function encoderLines(encoder, originOf) {
  const widget = (encoder.widgets ?? []).find((w) => w.name === "instructions");
  const slot = (encoder.inputs ?? []).findIndex((i) => i.name === "instructions");
  const source = slot >= 0 ? originOf(encoder, slot) : null;
  if (source) {
    const text = (source.widgets ?? []).find((w) => typeof w.value === "string");
    return text ? splitInstructions(text.value) : null;
  }
  return widget ? splitInstructions(widget.value) : null;
}
