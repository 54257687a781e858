"""Multi-instruction encoding and the three training-free knobs on ComfyUI's own CLIP and Flux."""
import re

import pytest
import torch

import ks_fixtures as F

pytestmark = pytest.mark.comfyui

SIGMA = 0.7
PROMPT = "make the sky stormy\nturn the car red\nadd snow on the roof"


@pytest.fixture(scope="module")
def clip():
    F.import_comfyui()
    return F.tiny_flux_clip(seed=3)


@pytest.fixture(scope="module")
def patcher(clip):
    return F.comfy_patcher(F.tiny_bfl_state_dict(seed=0, pooled_dim=F.TINY_CLIP_L_POOLED))


@pytest.fixture(scope="module")
def latents():
    g = torch.Generator().manual_seed(1)
    return dict(reference=torch.randn(1, 16, 8, 8, generator=g), x=torch.randn(2, 16, 8, 8, generator=g))


def encode_lines(clip, text):
    from kontext_sliders.nodes.instruction_encode import encode_instructions
    return encode_instructions(clip, text)


def clip_text_encode(clip, text):
    import nodes
    return nodes.CLIPTextEncode().encode(clip, text)[0]


def with_reference(conditioning, patcher, reference, guidance=3.5):
    """What ReferenceLatent + FluxGuidance add in a Kontext workflow."""
    import node_helpers
    return node_helpers.conditioning_set_values(conditioning, {
        "reference_latents": [F.process_latent_out(patcher, reference)], "guidance": guidance}, append=False)


def predict(model, positive, latents, negative=None, cfg=1.0):
    with torch.no_grad():
        return F.comfy_predict(model, positive, latents["x"], SIGMA, negative=negative, cfg=cfg)[0]


def metadata(conditioning):
    from kontext_sliders.nodes.instruction_encode import METADATA_KEY
    return conditioning[0][1][METADATA_KEY]


# ---------------------------------------------------------------- the encode node

def test_encoding_equals_clip_text_encode_of_the_joined_lines(clip):
    text = "  make the sky stormy \n\n turn the car (red:1.2)\n"
    ours = encode_lines(clip, text)
    reference = clip_text_encode(clip, "make the sky stormy turn the car (red:1.2)")
    assert len(ours) == len(reference) == 1
    assert torch.equal(ours[0][0], reference[0][0])
    assert torch.equal(ours[0][1]["pooled_output"], reference[0][1]["pooled_output"])
    assert metadata(ours).spans.lines == ("make the sky stormy", "turn the car (red:1.2)")


SPAN_PROMPTS = [
    ["make the sky stormy", "turn the car red"],
    ["turn the car (red:1.2)", "make the (sky:0.8) stormy"],
    ["make it look like a café in Zürich", "add a sign saying Grüße aus München", "serve crème brûlée"],
    ["add a " + " ".join(["very"] * 80) + " tall tree", "remove the bench"],  # > 77 CLIP tokens in one line
    ["remove the person on the left", "add a dog", "make it night"],
    ["((brighter)) colours", "replace the text with 'OPEN 24/7'", "zoom out"],
    ["a", "b c", "d"],
]


def _without_weights(line):
    # ComfyUI's weight syntax: (text:w) and (text) groups; the tokens are the text's
    line = re.sub(r"\(([^():]*):[-0-9.]+\)", r"\1", line)
    return line.replace("(", "").replace(")", "")


def _normalised(text):
    return " ".join(text.split())


@pytest.mark.parametrize("lines", SPAN_PROMPTS)
def test_span_tokens_decode_back_to_each_sub_instruction(clip, lines):
    from kontext_sliders.nodes.instruction_encode import t5_content
    spans = metadata(encode_lines(clip, "\n".join(lines))).spans
    content, sequence = t5_content(clip, " ".join(lines))
    decode = clip.tokenizer.t5xxl.tokenizer.decode
    assert len(spans.spans) == len(lines)
    assert spans.spans[0][0] == 0 and spans.spans[-1][1] == len(content)
    for (start, end), line in zip(spans.spans, lines):
        text = decode([t for t, _, _ in sequence[start:end]])
        assert _normalised(text) == _normalised(_without_weights(line)), (line, text)
    for (start, end), line in zip(spans.spans, lines):  # weights ride along with the span's tokens
        if ":1.2)" in line:
            assert max(w for _, w, _ in sequence[start:end]) == pytest.approx(1.2)


def test_pad_position_is_the_first_pad_after_the_end_token(clip):
    from kontext_sliders.nodes.instruction_encode import t5_content
    spans = metadata(encode_lines(clip, PROMPT)).spans
    content, sequence = t5_content(clip, PROMPT.replace("\n", " "))
    t5 = clip.tokenizer.t5xxl
    assert spans.length == len(sequence) == 256  # ComfyUI's Flux T5 tokenizer pads to 256
    assert sequence[len(content)][0] == t5.end_token
    assert spans.pad_index == len(content) + 1 and sequence[spans.pad_index][0] == t5.pad_token


def test_text_beyond_the_t5_length_is_a_clear_error(clip, monkeypatch):
    monkeypatch.setattr(clip.tokenizer.t5xxl, "max_length", 16)
    with pytest.raises(ValueError, match="longer than the T5 tokenizer's 16 tokens"):
        encode_lines(clip, "make the sky very very stormy and dark\nturn the small old car bright red")


def test_empty_input_and_weight_group_across_lines_are_clear_errors(clip):
    with pytest.raises(ValueError, match="no instructions"):
        encode_lines(clip, "\n  \n")
    with pytest.raises(ValueError, match="could not locate line 1"):
        encode_lines(clip, "(make the sky\nstormy:1.3)")
    for empty in ("()", "\u200b"):  # an empty weight group; a zero-width space (not stripped as whitespace)
        with pytest.raises(ValueError, match="line 2 .* tokenises to nothing"):
            encode_lines(clip, "make the sky stormy\n" + empty)


def test_metadata_survives_reference_latent_flux_guidance_and_combine(clip, patcher, latents):
    import nodes
    from comfy_extras.nodes_edit_model import ReferenceLatent
    from comfy_extras.nodes_flux import FluxGuidance
    from kontext_sliders.nodes.instruction_encode import instruction_entries
    conditioning = encode_lines(clip, PROMPT)
    step = ReferenceLatent.execute(conditioning, {"samples": latents["reference"]})[0]
    step = FluxGuidance.execute(step, 2.5)[0]
    other = clip_text_encode(clip, "a plain prompt")
    combined = nodes.ConditioningCombine().combine(step, other)[0]
    entries = instruction_entries(combined)
    assert len(entries) == 1 and entries[0] is metadata(conditioning)
    assert combined[0][1]["guidance"] == 2.5 and "reference_latents" in combined[0][1]
    with pytest.raises(ValueError, match="no sub-instruction spans"):
        instruction_entries(other)


def test_strength_count_and_malformed_numbers_are_clear_errors(clip, patcher):
    from kontext_sliders.nodes.knobs import instruction_guidance_model, instruction_sliders_model
    conditioning = encode_lines(clip, PROMPT)
    with pytest.raises(ValueError, match=r"Sliders strengths: 2 value\(s\) given but the prompt has 3 sub-instruction"):
        instruction_sliders_model(patcher, conditioning, "1, 0.5")
    with pytest.raises(ValueError, match="'half' is not a number"):
        instruction_guidance_model(patcher, conditioning, "1, half, 0")
    with pytest.raises(ValueError, match="'1_0' is not a number"):  # float() would read 10
        instruction_sliders_model(patcher, conditioning, "1, 1_0, 0")


@pytest.mark.parametrize("knob", ["sliders", "guidance"])
def test_strengths_outside_the_accepted_range_are_refused_and_its_ends_stay_finite(clip, patcher, latents, knob):
    from kontext_sliders.core.knobs.guidance import GUIDANCE_RANGE
    from kontext_sliders.core.knobs.toward_pad import SLIDER_RANGE
    from kontext_sliders.nodes.knobs import instruction_guidance_model, instruction_sliders_model
    make, (low, high) = {"sliders": (instruction_sliders_model, SLIDER_RANGE),
                         "guidance": (instruction_guidance_model, GUIDANCE_RANGE)}[knob]
    conditioning = encode_lines(clip, PROMPT)
    for value in ("1e30", "1e300", "-1e30"):  # once: all-NaN latents with a success status, or a bare overflow
        with pytest.raises(ValueError, match=rf"{value} for line 1 \('make the sky stormy'\) is outside the "
                                             rf"accepted range {low:g} \.\.\. {high:g}"):
            make(patcher, conditioning, f"{value}, 1, 1")
    positive = with_reference(conditioning, patcher, latents["reference"])
    # larger-than-usual latents: the ends of the range must stay finite on any finite input
    loud = dict(latents, x=latents["x"] * 50)
    for strengths in (f"{low:g}, {high:g}, 1", f"{high:g}, {high:g}, {high:g}", f"{low:g}, {low:g}, {low:g}"):
        out = predict(make(patcher, conditioning, strengths), positive, loud, cfg=1.0)
        assert torch.isfinite(out).all(), strengths


def test_encode_node_makes_one_encode_and_leaves_the_guidance_encodings_for_later(clip, patcher, monkeypatch):
    from kontext_sliders.nodes.knobs import instruction_guidance_model, instruction_sliders_model
    calls = {"encode": 0, "clip_l_tokenize": 0}
    encode_from_tokens_scheduled = clip.encode_from_tokens_scheduled
    clip_l_tokenize = clip.tokenizer.clip_l.tokenize_with_weights

    def counting_encode(*args, **kwargs):
        calls["encode"] += 1
        return encode_from_tokens_scheduled(*args, **kwargs)

    def counting_tokenize(*args, **kwargs):
        calls["clip_l_tokenize"] += 1
        return clip_l_tokenize(*args, **kwargs)

    monkeypatch.setattr(clip, "encode_from_tokens_scheduled", counting_encode)
    monkeypatch.setattr(clip.tokenizer.clip_l, "tokenize_with_weights", counting_tokenize)
    conditioning = encode_lines(clip, PROMPT)
    assert calls == {"encode": 1, "clip_l_tokenize": 1}  # as CLIPTextEncode: one tokenisation, one encode
    instruction_sliders_model(patcher, conditioning, "0.5, 1, 1")
    assert calls["encode"] == 1  # sliders need no extra encode for a prompt with pad tokens
    instruction_guidance_model(patcher, conditioning, "0.5, 1, 1")
    assert calls["encode"] == 1 + 3  # guidance: the prompt without each of the 3 lines, once ...
    instruction_guidance_model(patcher, conditioning, "1.5, 1, 0")
    assert calls["encode"] == 4  # ... and kept for the next strengths
    without = metadata(conditioning).without
    for line_index, (context, pooled) in enumerate(without):
        lines = PROMPT.split("\n")
        reference = clip_text_encode(clip, " ".join(lines[:line_index] + lines[line_index + 1:]))
        assert torch.equal(context, reference[0][0]) and torch.equal(pooled, reference[0][1]["pooled_output"])


def test_cancel_interrupts_the_encode_between_lines(clip, monkeypatch):
    import comfy.model_management
    t5 = clip.tokenizer.t5xxl
    tokenize = t5.tokenize_with_weights
    seen = []

    def tokenize_then_cancel(text, *args, **kwargs):
        seen.append(text)
        if len(seen) == 3:  # the user presses Cancel while the encode is under way
            comfy.model_management.interrupt_current_processing(True)
        return tokenize(text, *args, **kwargs)

    monkeypatch.setattr(t5, "tokenize_with_weights", tokenize_then_cancel)
    lines = [f"make the tree number {i} green" for i in range(32)]
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            encode_lines(clip, "\n".join(lines))
    finally:
        comfy.model_management.interrupt_current_processing(False)
    assert len(seen) == 3  # stopped right there: no further tokenising, no encode


def test_only_line_breaks_separate_sub_instructions(clip):
    text = "make the sky\u2028stormy\vand dark\nturn the car red"
    conditioning = encode_lines(clip, text)
    assert metadata(conditioning).spans.lines == ("make the sky\u2028stormy\vand dark", "turn the car red")
    reference = clip_text_encode(clip, "make the sky\u2028stormy\vand dark turn the car red")
    assert torch.equal(conditioning[0][0], reference[0][0])


# ---------------------------------------------------------------- knob 1: modulation multiplier

def _distances(model_for, values, positive, latents, plain):
    return [float((predict(model_for(v), positive, latents) - plain).abs().mean()) for v in values]


def assert_effect_grows(model_for, below, above, positive, latents):
    """Mean |output - unpatched| is 0 at the neutral value and grows strictly as the knob moves away."""
    plain = predict(model_for(below[0]), positive, latents)
    for values in (below, above):
        d = _distances(model_for, values, positive, latents, plain)
        assert d[0] == 0.0 and all(a < b for a, b in zip(d, d[1:])), (values, d)


def test_modulation_strength_identity_and_monotonic_effect(clip, patcher, latents):
    from kontext_sliders.nodes.knobs import modulation_scaled_model
    positive = with_reference(clip_text_encode(clip, "make the sky stormy"), patcher, latents["reference"])
    plain = predict(patcher, positive, latents)
    assert torch.equal(predict(modulation_scaled_model(patcher, 1.0, 0, -1), positive, latents), plain)
    for terms in ("mlp", "attention", "both"):
        assert_effect_grows(lambda m: modulation_scaled_model(patcher, m, 0, -1, terms), [1.0, 0.75, 0.5, 0.25, 0.0],
                            [1.0, 1.5, 2.0, 3.0], positive, latents)


def test_modulation_strength_block_range(patcher, clip, latents):
    from kontext_sliders.nodes.knobs import modulation_scaled_model
    positive = with_reference(clip_text_encode(clip, "make the sky stormy"), patcher, latents["reference"])
    one_block = modulation_scaled_model(patcher, 0.0, 1, 1)
    assert set(k for k in one_block.object_patches if "txt_mod" in k) == {
        f"diffusion_model.double_blocks.{i}.txt_mod.forward" for i in range(F.DEPTH)}
    runtime = one_block.get_attachment("kontext_sliders.runtime")
    assert [runtime.block_multipliers(i) for i in range(F.DEPTH)] == [(None, None), (None, 0.0), (None, None)]
    all_blocks = modulation_scaled_model(patcher, 0.0, 0, -1)
    plain = predict(patcher, positive, latents)
    assert 0 < float((predict(one_block, positive, latents) - plain).abs().mean()) < \
        float((predict(all_blocks, positive, latents) - plain).abs().mean())
    with pytest.raises(ValueError, match="outside this model's 3 double-stream blocks"):
        modulation_scaled_model(patcher, 0.5, 2, 5)


# ---------------------------------------------------------------- knob 2: per-instruction sliders

class _TextProbe:
    """Forward pre-hooks on the first module each block applies to its (patched) text input; ``check``
    runs there, inside the model's forward, on every block's input."""

    def __init__(self, model, check):
        self.seen = []
        self.check = check
        dm = model.model.diffusion_model
        self.handles = [b.txt_norm1.register_forward_pre_hook(self._double) for b in dm.double_blocks]
        self.handles += [b.pre_norm.register_forward_pre_hook(self._single) for b in dm.single_blocks]

    def _double(self, module, inputs):
        self.check("double", inputs[0])
        self.seen.append("double")

    def _single(self, module, inputs):
        self.check("single", inputs[0])
        self.seen.append("single")

    def close(self):
        for h in self.handles:
            h.remove()


def test_sliders_at_one_are_the_unpatched_model_and_zero_puts_tokens_on_the_pad_state(clip, patcher, latents):
    from kontext_sliders.nodes.knobs import instruction_sliders_model
    conditioning = encode_lines(clip, PROMPT)
    spans = metadata(conditioning).spans
    positive = with_reference(conditioning, patcher, latents["reference"])
    plain = predict(patcher, positive, latents)
    assert torch.equal(predict(instruction_sliders_model(patcher, conditioning, "1, 1, 1"), positive, latents), plain)

    suppressed = instruction_sliders_model(patcher, conditioning, "1, 0, 1")
    (s0, e0), (s1, e1), _ = spans.spans

    def on_the_pad_state(kind, h):
        txt = h[:, :spans.length]
        pad = txt[:, spans.pad_index:spans.pad_index + 1]
        assert torch.equal(txt[:, s1:e1], pad.expand(-1, e1 - s1, -1)), kind  # exactly the pad state
        assert not torch.allclose(txt[:, s0:e0], pad.expand(-1, e0 - s0, -1))  # the others keep theirs

    probe = _TextProbe(patcher, on_the_pad_state)
    try:
        out = predict(suppressed, positive, latents)
    finally:
        probe.close()
    assert probe.seen == ["double"] * F.DEPTH + ["single"] * F.DEPTH_SINGLE  # every block, one call at cfg 1
    assert not torch.allclose(out, plain)


def test_slider_effect_grows_with_distance_from_one(clip, patcher, latents):
    from kontext_sliders.nodes.knobs import instruction_sliders_model
    conditioning = encode_lines(clip, PROMPT)
    positive = with_reference(conditioning, patcher, latents["reference"])
    assert_effect_grows(lambda s: instruction_sliders_model(patcher, conditioning, f"1, {s}, 1"),
                        [1.0, 0.75, 0.5, 0.25, 0.0], [1.0, 1.5, 2.0, 3.0], positive, latents)


def test_sliders_leave_negative_rows_and_other_prompts_untouched(clip, patcher, latents):
    from kontext_sliders.nodes.knobs import instruction_sliders_model
    conditioning = encode_lines(clip, PROMPT)
    positive = with_reference(conditioning, patcher, latents["reference"])
    negative = with_reference(clip_text_encode(clip, "blurry"), patcher, latents["reference"])
    model = instruction_sliders_model(patcher, conditioning, "0.3, 1, 2")
    _, rows = F.comfy_predict(model, positive, latents["x"], SIGMA, negative=negative, cfg=2.0)
    _, plain_rows = F.comfy_predict(patcher, positive, latents["x"], SIGMA, negative=negative, cfg=2.0)
    assert torch.equal(rows["uncond"], plain_rows["uncond"])
    assert not torch.allclose(rows["cond"], plain_rows["cond"])
    other = with_reference(clip_text_encode(clip, "a different prompt"), patcher, latents["reference"])
    assert torch.equal(predict(model, other, latents), predict(patcher, other, latents))


def test_a_knob_whose_prompt_never_reaches_the_sampler_says_so(clip, patcher, latents, caplog):
    from kontext_sliders.nodes.knobs import instruction_guidance_model
    conditioning = encode_lines(clip, PROMPT)
    other = with_reference(clip_text_encode(clip, "a different prompt"), patcher, latents["reference"])
    model = instruction_guidance_model(patcher, conditioning, "0.3, 1, 2")
    with caplog.at_level("WARNING"):
        predict(model, other, latents)
        predict(model, other, latents)
    warnings = [r for r in caplog.records if "not the conditioning wired to the node" in r.getMessage()]
    assert len(warnings) == 1 and "Instruction Guidance" in warnings[0].getMessage()  # once, not every step
    caplog.clear()
    with caplog.at_level("WARNING"):
        predict(model, with_reference(conditioning, patcher, latents["reference"]), latents)
    assert not [r for r in caplog.records if "not the conditioning wired" in r.getMessage()]


# ---------------------------------------------------------------- knob 3: per-instruction guidance

class _BatchRecorder:
    """A DIFFUSION_MODEL wrapper recording the batch size of every transformer call."""

    def __init__(self):
        self.batches = []

    def __call__(self, executor, x, *args, **kwargs):
        self.batches.append(x.shape[0])
        return executor(x, *args, **kwargs)


def recorded(model):
    import comfy.patcher_extension
    recorder = _BatchRecorder()
    model = model.clone()
    model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "test.recorder", recorder)
    return model, recorder


def test_guidance_at_one_is_the_plain_model_and_zero_is_the_prompt_without_it(clip, patcher, latents):
    from kontext_sliders.core.instructions import leave_one_out_prompts
    from kontext_sliders.nodes.knobs import instruction_guidance_model
    conditioning = encode_lines(clip, PROMPT)
    positive = with_reference(conditioning, patcher, latents["reference"])
    plain = predict(patcher, positive, latents)
    assert torch.equal(predict(instruction_guidance_model(patcher, conditioning, "1, 1, 1"), positive, latents), plain)

    lines = metadata(conditioning).spans.lines
    without_second = with_reference(clip_text_encode(clip, leave_one_out_prompts(list(lines))[1]), patcher,
                                    latents["reference"])
    expected = predict(patcher, without_second, latents)
    model, recorder = recorded(instruction_guidance_model(patcher, conditioning, "1, 0, 1"))
    got = predict(model, positive, latents)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(expected, plain)
    assert recorder.batches == [2 * latents["x"].shape[0]]  # full + one leave-one-out row set, one forward


def test_guidance_formula_with_cfg_above_one_in_one_batched_forward(clip, patcher, latents):
    from kontext_sliders.core.instructions import leave_one_out_prompts
    from kontext_sliders.nodes.knobs import instruction_guidance_model
    conditioning = encode_lines(clip, PROMPT)
    lines = list(metadata(conditioning).spans.lines)
    ref = latents["reference"]
    positive = with_reference(conditioning, patcher, ref)
    negative = with_reference(clip_text_encode(clip, "blurry"), patcher, ref)
    strengths = [1.5, 0.25, -0.5]
    model, recorder = recorded(instruction_guidance_model(patcher, conditioning, ", ".join(map(str, strengths))))
    cfg = 2.5
    got, rows = F.comfy_predict(model, positive, latents["x"], SIGMA, negative=negative, cfg=cfg)

    full = predict(patcher, positive, latents)
    without = [predict(patcher, with_reference(clip_text_encode(clip, p), patcher, ref), latents)
               for p in leave_one_out_prompts(lines)]
    guided = full + sum((s - 1) * (full - w) for s, w in zip(strengths, without))
    uncond = predict(patcher, negative, latents)
    torch.testing.assert_close(rows["cond"], guided, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(rows["uncond"], uncond, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got, uncond + cfg * (guided - uncond), rtol=1e-4, atol=1e-4)
    batch = latents["x"].shape[0]
    assert recorder.batches == [(2 + len(lines)) * batch]  # cond, uncond and 3 leave-one-out sets together


def test_guidance_effect_grows_with_distance_from_one(clip, patcher, latents):
    from kontext_sliders.nodes.knobs import instruction_guidance_model
    conditioning = encode_lines(clip, PROMPT)
    positive = with_reference(conditioning, patcher, latents["reference"])
    assert_effect_grows(lambda s: instruction_guidance_model(patcher, conditioning, f"{s}, 1, 1"),
                        [1.0, 0.75, 0.5, 0.0, -0.5], [1.0, 1.5, 2.0, 3.0], positive, latents)


def test_knobs_compose_with_kontinuous_offsets_and_each_other(clip, patcher, latents):
    from kontext_sliders.nodes.knobs import (instruction_guidance_model, instruction_sliders_model,
                                             modulation_scaled_model)
    conditioning = encode_lines(clip, PROMPT)
    positive = with_reference(conditioning, patcher, latents["reference"])
    model = modulation_scaled_model(patcher, 0.5, 0, -1)
    model = instruction_sliders_model(model, conditioning, "1, 0.5, 1")
    model = instruction_guidance_model(model, conditioning, "1, 1, 0")
    runtime = model.get_attachment("kontext_sliders.runtime")
    assert runtime.multipliers and runtime.sliders and runtime.guidance
    out = predict(model, positive, latents)
    # each knob alone differs from the three together
    for alone in (modulation_scaled_model(patcher, 0.5, 0, -1),
                  instruction_sliders_model(patcher, conditioning, "1, 0.5, 1"),
                  instruction_guidance_model(patcher, conditioning, "1, 1, 0")):
        assert not torch.allclose(predict(alone, positive, latents), out)
    assert torch.isfinite(out).all()


def test_long_prompt_gets_one_pad_token_from_comfyuis_tokenizer(clip, patcher, latents):
    from kontext_sliders.nodes.instruction_encode import T5_KEY
    from kontext_sliders.nodes.knobs import instruction_sliders_model
    lines = ["make the sky " + " ".join(["stormy"] * 260), "turn the car red"]
    text = " ".join(lines)
    conditioning = encode_lines(clip, "\n".join(lines))
    meta = metadata(conditioning)
    assert meta.spans.pad_index is None  # ComfyUI's padding to 256 left no pad token
    spans, padded = meta.slider_target()
    assert padded.shape[1] == spans.length == meta.spans.length + 1 and spans.pad_index == meta.spans.length
    # the same as encoding, by hand, the tokenised prompt with one pad token appended after the end token
    tokens = clip.tokenize(text)
    t5 = clip.tokenizer.t5xxl
    assert tokens[T5_KEY][0][-1][0] == t5.end_token
    tokens[T5_KEY] = [tokens[T5_KEY][0] + [(t5.pad_token, 1.0)]]
    assert torch.equal(padded, clip.encode_from_tokens(tokens))
    assert torch.equal(conditioning[0][0], clip_text_encode(clip, text)[0][0])  # the output itself is unchanged

    positive = with_reference(conditioning, patcher, latents["reference"])
    model = instruction_sliders_model(patcher, conditioning, "1, 0")
    (s0, e0), (s1, e1) = spans.spans

    def on_the_appended_pad(kind, h):
        if kind == "double":
            assert h.shape[1] == spans.length  # the prompt plus one pad token
        txt = h[:, :spans.length]
        assert torch.equal(txt[:, s1:e1], txt[:, spans.pad_index:spans.pad_index + 1].expand(-1, e1 - s1, -1))

    probe = _TextProbe(patcher, on_the_appended_pad)
    try:
        out = predict(model, positive, latents)
    finally:
        probe.close()
    assert len(probe.seen) == F.DEPTH + F.DEPTH_SINGLE
    assert torch.isfinite(out).all()


def test_guidance_tells_comfyui_the_memory_of_its_extra_rows(clip, patcher):
    from kontext_sliders.nodes.knobs import instruction_guidance_model
    conditioning = encode_lines(clip, PROMPT)
    model = instruction_guidance_model(patcher, conditioning, "1, 0.5, 2")  # two leave-one-out row sets
    shape = (2, 16, 8, 8)
    plain = patcher.model.memory_required(shape)
    model.patch_model()
    try:
        assert model.model.memory_required(shape) == pytest.approx(3 * plain)
    finally:
        model.unpatch_model()
    assert patcher.model.memory_required(shape) == plain
