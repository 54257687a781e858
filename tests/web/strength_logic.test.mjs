// node --test tests/web/ : the per-line strength sliders' pure logic (web/strength_logic.js).
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import {
  alignValues, ENCODER, formatNumber, formatStrengths, parseStrengths, SLIDER_NODES, sliderLabel, slidersFor,
  splitInstructions, textForNewLines, textForSlider, upstreamLines,
} from "../../web/strength_logic.js";

const pack = new URL("../../", import.meta.url);

test("lines split as core/instructions.py split_instructions: \\n or \\r\\n, stripped, blanks dropped", () => {
  assert.deepEqual(splitInstructions("make the sky stormy\r\n\n  turn the car red  \n\n"),
    ["make the sky stormy", "turn the car red"]);
  assert.deepEqual(splitInstructions("a\vb\u2028c"), ["a\vb\u2028c"]); // only a newline ends a line
  assert.deepEqual(splitInstructions(""), []);
  assert.deepEqual(splitInstructions(undefined), []);
});

test("the strengths text reads as the server does and is written compactly", () => {
  assert.deepEqual(parseStrengths("1, 0.5; -0.25"), [1, 0.5, -0.25]);
  assert.deepEqual(parseStrengths(" "), []);
  const odd = parseStrengths("1, nan, 1_0, 0x1, ");
  assert.equal(odd[0], 1);
  assert.ok(odd.slice(1).every(Number.isNaN), odd);
  assert.deepEqual([1, 0.5, -0.25, 1 / 3, -0.00001, 2.5e-3, 3].map(formatNumber),
    ["1", "0.5", "-0.25", "0.3333", "0", "0.0025", "3"]);
  assert.equal(formatStrengths([1, 0.5, -0.25]), "1, 0.5, -0.25");
  // what it writes, the server's strict parser reads back (core/instructions.py _NUMBER)
  for (const v of [1, 0.5, -0.25, 1 / 3, -1, 2.95]) assert.equal(parseStrengths(formatNumber(v))[0], Number(formatNumber(v)));
});

test("labels: the start of the line, about 24 characters", () => {
  assert.equal(sliderLabel("make the sky stormy"), "make the sky stormy");
  const long = sliderLabel("turn the small car in the back bright red");
  assert.equal(long, "turn the small car in t…");
  assert.ok(long.length <= 24);
});

test("values follow their lines: added lines get 1, removed lines drop, reordered lines keep theirs", () => {
  const a = "make the sky stormy", b = "turn the car red", c = "add snow";
  assert.deepEqual(alignValues([a, b], [0.5, 2], [a, b, c]), [0.5, 2, 1]); // added at the end
  assert.deepEqual(alignValues([a, b], [0.5, 2], [c, a, b]), [1, 0.5, 2]); // added at the start
  assert.deepEqual(alignValues([a, b, c], [0.5, 2, 0], [a, c]), [0.5, 0]); // removed
  assert.deepEqual(alignValues([a, b, c], [0.5, 2, 0], [c, a, b]), [0, 0.5, 2]); // reordered
  assert.deepEqual(alignValues([a, b], [0.5, 2], [a, `${b}der`]), [0.5, 2]); // a line edited in place keeps its value
  assert.deepEqual(alignValues([a, b], [0.5, 2], [c, a, `${b}!`]), [1, 0.5, 2]); // added + edited
  assert.deepEqual(alignValues([a, a], [0.5, 2], [a, b, a]), [0.5, 1, 2]); // duplicates pair in order
  assert.deepEqual(alignValues([], [], [a]), [1]);
});

test("which sliders a node shows", () => {
  const lines = ["make the sky stormy", "turn the car red"];
  assert.deepEqual(slidersFor(lines, "1, 0.5"), {
    mode: "lines", labels: lines, titles: lines, values: [1, 0.5], note: "" });
  const short = slidersFor(lines, "0.25");
  assert.deepEqual([short.mode, short.values], ["lines", [0.25, 1]]);
  assert.match(short.note, /1 value\(s\) for 2 line\(s\)/);
  assert.match(slidersFor(lines, "1, x").note, /not a number/);
  // SliderEdit Apply: per line when the counts match, one slider (GSTLoRA) otherwise
  assert.equal(slidersFor(lines, "1, 0.5", true).mode, "lines");
  const single = slidersFor(lines, "0.7", true);
  assert.deepEqual([single.mode, single.values, single.labels.length], ["single", [0.7], 1]);
  // no encoder upstream: one slider per value in the text
  assert.deepEqual(slidersFor(null, "1, 2").labels, ["value 1", "value 2"]);
});

test("the text after lines change upstream, and after a slider moves", () => {
  const [a, b, c] = ["a", "b", "c"];
  assert.equal(textForNewLines([a, b], [a, b, c], "1, 0.5"), "1, 0.5, 1");
  assert.equal(textForNewLines([a, b, c], [c, a], "1, 0.5, -0.25"), "-0.25, 1");
  assert.equal(textForNewLines([a, b], [a, b], "1, 0.5"), null); // nothing to write
  assert.equal(textForNewLines([a, b], [a, b, c], "0.5", true), null); // a GSTLoRA's single value stays
  assert.equal(textForNewLines([a, b], [a, b, c], "1, 0.5", true), "1, 0.5, 1"); // an STLoRA's follow
  assert.equal(textForSlider(slidersFor([a, b, c], "1, 0.5, 0"), 2, -0.25), "1, 0.5, -0.25");
  assert.equal(textForSlider(slidersFor([a, b], "0.5"), 1, 2), "0.5, 2"); // a short text is completed
});

test("the encoder is found through the conditioning chain", () => {
  const encoder = { type: ENCODER, inputs: [{ name: "clip", type: "CLIP" }, { name: "instructions", type: "STRING" }],
                    widgets: [{ name: "instructions", value: "sky\n\nred car\n" }] };
  const latent = { type: "VAEEncode", inputs: [], widgets: [] };
  const reference = { type: "ReferenceLatent", inputs: [{ name: "conditioning", type: "CONDITIONING" },
                                                        { name: "latent", type: "LATENT" }] };
  const reroute = { type: "Reroute", inputs: [{ name: "", type: "*" }] };
  const guidance = { type: "FluxGuidance", inputs: [{ name: "conditioning", type: "CONDITIONING" }],
                     widgets: [{ name: "guidance", value: 2.5 }] };
  const knob = { type: "KontextInstructionSliders", inputs: [{ name: "model", type: "MODEL" },
                                                             { name: "conditioning", type: "CONDITIONING" }] };
  const links = new Map([[knob, [null, guidance]], [guidance, [reroute]], [reroute, [reference]],
                         [reference, [encoder, latent]], [encoder, [null, null]]]);
  const originOf = (node, i) => links.get(node)?.[i] ?? null;
  assert.deepEqual(upstreamLines(knob, originOf), ["sky", "red car"]);
  links.set(reroute, [null]); // the chain is cut
  assert.equal(upstreamLines(knob, originOf), null);
  links.set(reroute, [guidance]); // a cycle ends too
  assert.equal(upstreamLines(knob, originOf), null);
  const combine = { type: "ConditioningCombine", inputs: [{ name: "conditioning_1", type: "CONDITIONING" },
                                                          { name: "conditioning_2", type: "CONDITIONING" }] };
  links.set(combine, [encoder, encoder]);
  links.set(knob, [null, combine]); // two conditionings: ambiguous, no sliders per line
  assert.equal(upstreamLines(knob, originOf), null);
  links.set(knob, [null, encoder]);
  const primitive = { type: "PrimitiveStringMultiline", inputs: [], widgets: [{ name: "value", value: "x\ny\nz" }] };
  links.set(encoder, [null, primitive]); // instructions linked from another node's text
  assert.deepEqual(upstreamLines(knob, originOf), ["x", "y", "z"]);
});

test("the ranges are the ones the Python nodes accept", () => {
  const range = (path, name) => {
    const m = readFileSync(new URL(path, pack), "utf8").match(new RegExp(`^${name} = \\(([-0-9.]+), ([-0-9.]+)\\)`, "m"));
    assert.ok(m, `${name} in ${path}`);
    return [Number(m[1]), Number(m[2])];
  };
  const expected = {
    KontextInstructionSliders: range("core/knobs/toward_pad.py", "SLIDER_RANGE"),
    KontextInstructionGuidance: range("core/knobs/guidance.py", "GUIDANCE_RANGE"),
    SliderEditApply: range("core/slideredit/weights.py", "STRENGTH_RANGE"),
  };
  for (const [node, [min, max]] of Object.entries(expected)) {
    assert.deepEqual([SLIDER_NODES[node].min, SLIDER_NODES[node].max], [min, max], node);
    assert.equal(SLIDER_NODES[node].widget, "strengths");
  }
  assert.equal(SLIDER_NODES.SliderEditApply.single, true);
});
