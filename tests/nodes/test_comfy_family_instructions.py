"""Kontext Multi-Instruction Encode, Instruction Sliders and Instruction Guidance on FLUX.2 and Qwen-Image-Edit:
tiny real text encoders (ComfyUI's tokenizers and chat templates) and tiny models through ComfyUI's detection."""

import pytest
import torch

import ks_fixtures as F

pytestmark = pytest.mark.comfyui

SIGMA = 0.7
PROMPT = "make the sky stormy\nturn the car (red:1.2)\nadd snow, on the roof!"


@pytest.fixture(scope="module", params=list(F.FAMILY_VARIANTS))
def env(request):
    F.import_comfyui()
    family, module_name, tiny = F.family_variant(request.param)
    _, clip = F.family_text_encoder(request.param, seed=3)
    if clip is None:
        pytest.skip("this ComfyUI cannot build FLUX.2's text encoders (0.8: no [klein]; [dev]'s tokenizer fails)")
    patcher = family.tiny_model(family.tiny_state_dict(seed=0, tiny=tiny), tiny)
    g = torch.Generator().manual_seed(1)
    shape = (128, 8, 8) if module_name == "flux2" else (16, 1, 8, 8)  # Qwen-Image: a frame axis of 1
    reference = torch.randn(1, *shape, generator=g)
    # Qwen-Image-Edit: one picture for the vision tower (TextEncodeQwenImageEditPlus's image1)
    inputs = {"image1": torch.rand(1, 48, 64, 3, generator=g)} if module_name == "qwen_image" else {}

    def edit(conditioning):
        """What ReferenceLatent (+ FluxGuidance on [dev]) add in an edit workflow."""
        import node_helpers
        values = {"reference_latents": [patcher.model.process_latent_out(reference)]}
        if getattr(tiny, "guidance", False):
            values["guidance"] = 3.5
        return node_helpers.conditioning_set_values(conditioning, values, append=False)

    return dict(name=request.param, family=family, clip=clip, patcher=patcher, edit=edit, inputs=inputs,
                x=torch.randn(2, *shape, generator=g))


def encode_lines(env, text=PROMPT):
    from kontext_sliders.nodes.instruction_encode import encode_instructions
    return encode_instructions(env["clip"], text, **env["inputs"])


def plain_encode(env, text):
    """The family's plain encode node: CLIPTextEncode (FLUX.2), TextEncodeQwenImageEditPlus (Qwen-Image-Edit)."""
    return F.plain_family_encode(env["family"].NAME, env["clip"], text, env["inputs"].get("image1"))


def metadata(conditioning):
    from kontext_sliders.nodes.instruction_encode import METADATA_KEY
    return conditioning[0][1][METADATA_KEY]


def predict(model, env, positive, negative=None, cfg=1.0):
    with torch.no_grad():
        return F.comfy_predict(model, positive, env["x"], SIGMA, negative=negative, cfg=cfg)


def without_metadata(conditioning, context):
    from kontext_sliders.nodes.instruction_encode import METADATA_KEY
    return [[context, {k: v for k, v in extra.items() if k != METADATA_KEY}] for _, extra in conditioning]


# ---------------------------------------------------------------- the encode node

TRICKY = ["make it look like a café in Zürich\nadd a sign saying Grüße aus München\nserve crème brûlée 🍮",
          "(red) car, 2 doors\n3 more wheels!\n- no roof -",
          "a\nb c\nd"]


@pytest.mark.parametrize("prompt", TRICKY)
def test_spans_of_unicode_digits_and_punctuation_decode_back(env, prompt):
    from kontext_sliders.nodes.families import flux2_text, qwen_text
    from kontext_sliders.nodes.families.chat_text import token_ids
    ours = encode_lines(env, prompt)
    entry, clip, joined = metadata(ours), env["clip"], prompt.replace("\n", " ")
    assert torch.equal(ours[0][0], plain_encode(env, joined)[0][0])
    if entry.family == "flux2":
        key = flux2_text._key(clip)
        sequence = clip.tokenize(joined)[key][0]
    else:
        key = qwen_text.KEY
        sequence = qwen_text._tokens(clip, joined, (env["inputs"]["image1"], None, None))[key][0]
    ids = token_ids(sequence, qwen_text.IMAGE_PAD)
    shift = ours[0][0].shape[1] - len(ids)
    tokenizer = getattr(clip.tokenizer, key).tokenizer
    for (start, end), line in zip(entry.spans.spans, prompt.split("\n")):
        assert tokenizer.decode(ids[start - shift:end - shift]).strip() == line


def test_spans_decode_back_to_each_line_and_the_encoding_is_the_plain_nodes(env):
    from kontext_sliders.nodes.families import flux2_text, qwen_text
    from kontext_sliders.nodes.families.chat_text import token_ids
    ours = encode_lines(env)
    reference = plain_encode(env, PROMPT.replace("\n", " "))
    assert len(ours) == len(reference) == 1 and torch.equal(ours[0][0], reference[0][0])
    assert set(ours[0][1]) - set(reference[0][1]) == {"kontext_sliders_instructions"}
    entry = metadata(ours)
    assert entry.family == env["family"].NAME
    clip, prompt = env["clip"], PROMPT.replace("\n", " ")
    if entry.family == "flux2":
        key = flux2_text._key(clip)
        sequence = clip.tokenize(prompt)[key][0]
    else:
        key = qwen_text.KEY
        sequence = qwen_text._tokens(clip, prompt, (env["inputs"]["image1"], None, None))[key][0]
    ids = token_ids(sequence, qwen_text.IMAGE_PAD)
    shift = ours[0][0].shape[1] - len(ids)  # Qwen: the dropped system prompt and the expanded image token
    if entry.family == "qwen_image":
        assert shift > 0  # the vision rows outnumber the dropped template tokens at this image size
    tokenizer = getattr(clip.tokenizer, key).tokenizer
    lines = PROMPT.split("\n")
    assert entry.spans.lines == tuple(lines)
    for (start, end), line in zip(entry.spans.spans, lines):
        assert tokenizer.decode(ids[start - shift:end - shift]).strip() == line
    expected_pad = {"flux2-klein": entry.spans.spans[-1][1] + 9,  # after the template's 9 closing tokens
                    "flux2-dev": ours[0][0].shape[1] - 512}.get(env["name"])  # Qwen: none
    assert entry.spans.pad_index == expected_pad


class _StubVae:
    """Stands in for Qwen-Image's VAE (a Wan 2.1 VAE): a deterministic latent from the picture it is given."""

    def encode(self, pixels):
        return pixels.movedim(-1, 1)[:, :, None, ::8, ::8].repeat(1, 6, 1, 1, 1)[:, :16].contiguous()


def test_qwen_images_and_vae_give_the_edit_plus_nodes_conditioning_and_references(env):
    if env["family"].NAME != "qwen_image":
        pytest.skip("vae / image1..3 are Qwen-Image-Edit's (TextEncodeQwenImageEditPlus)")
    from comfy_extras.nodes_qwen import TextEncodeQwenImageEditPlus
    from kontext_sliders.nodes.instruction_encode import encode_instructions
    g = torch.Generator().manual_seed(7)
    image2 = torch.rand(1, 40, 40, 3, generator=g)
    ours = encode_instructions(env["clip"], PROMPT, vae=_StubVae(), image1=env["inputs"]["image1"], image2=image2)
    out = TextEncodeQwenImageEditPlus.execute(env["clip"], PROMPT.replace("\n", " "), _StubVae(),
                                              env["inputs"]["image1"], image2)
    reference = out.args[0] if hasattr(out, "args") else out[0]
    assert torch.equal(ours[0][0], reference[0][0])
    references = ours[0][1]["reference_latents"]
    assert len(references) == 2 and all(torch.equal(a, b) for a, b in zip(references, reference[0][1]["reference_latents"]))
    # two pictures' vision rows in front: the lines' rows move, their decoded text does not
    assert metadata(ours).spans.spans[0][0] > metadata(encode_lines(env)).spans.spans[0][0]
    assert metadata(ours).spans.spans[-1][1] == ours[0][0].shape[1] - 5  # the template's 5 closing tokens


@pytest.mark.parametrize("with_image", [True, False])
def test_qwen_encode_original_gives_the_original_nodes_conditioning(env, with_image):
    """``qwen_encode = TextEncodeQwenImageEdit``: the original node's encoding (its template, image1 at 1024² for
    the vision tower, the reference from the same resize), its spans, its leave-one-out encodings."""
    if env["family"].NAME != "qwen_image":
        pytest.skip("qwen_encode is Qwen-Image-Edit's")
    from comfy_extras.nodes_qwen import TextEncodeQwenImageEdit
    from kontext_sliders.nodes.families import qwen_text
    from kontext_sliders.nodes.families.chat_text import token_ids
    from kontext_sliders.nodes.instruction_encode import encode_instructions
    image = env["inputs"]["image1"] if with_image else None
    original = lambda text, vae=None: (lambda out: out.args[0] if hasattr(out, "args") else out[0])(  # noqa: E731
        TextEncodeQwenImageEdit.execute(env["clip"], text, vae, image))
    ours = encode_instructions(env["clip"], PROMPT, vae=_StubVae() if with_image else None, image1=image,
                               qwen_encode=qwen_text.ORIGINAL)
    reference = original(PROMPT.replace("\n", " "), _StubVae() if with_image else None)
    assert torch.equal(ours[0][0], reference[0][0])
    assert not torch.equal(ours[0][0], encode_lines(env)[0][0])  # not the Plus node's encoding
    if with_image:
        assert torch.equal(ours[0][1]["reference_latents"][0], reference[0][1]["reference_latents"][0])
    entry = metadata(ours)
    sequence = qwen_text._tokens(env["clip"], PROMPT.replace("\n", " "), (image, None, None), qwen_text.ORIGINAL)
    ids = token_ids(sequence[qwen_text.KEY][0], qwen_text.IMAGE_PAD)
    shift = ours[0][0].shape[1] - len(ids)
    tokenizer = getattr(env["clip"].tokenizer, qwen_text.KEY).tokenizer
    for (start, end), line in zip(entry.spans.spans, PROMPT.split("\n")):
        assert tokenizer.decode(ids[start - shift:end - shift]).strip() == line
    lines = PROMPT.split("\n")
    for i, (context, _) in enumerate(entry.without):
        assert torch.equal(context, original(" ".join(lines[:i] + lines[i + 1:]))[0][0])
    with pytest.raises(ValueError, match="TextEncodeQwenImageEdit takes one image"):
        encode_instructions(env["clip"], PROMPT, image1=env["inputs"]["image1"], image2=env["inputs"]["image1"],
                            qwen_encode=qwen_text.ORIGINAL)


def test_loo_and_padded_encodings_are_the_family_encodes(env):
    entry = metadata(encode_lines(env))
    lines = PROMPT.split("\n")
    for i, (context, _) in enumerate(entry.without):
        text = " ".join(lines[:i] + lines[i + 1:])
        assert torch.equal(context, plain_encode(env, text)[0][0])
    spans, padded = entry.slider_target()
    if env["family"].NAME == "qwen_image":  # one pad token appended: a causal LM keeps every earlier row
        assert padded.shape[1] == entry.context.shape[1] + 1 == spans.length == spans.pad_index + 1
        assert torch.allclose(padded[:, :-1], entry.context, atol=1e-5)
    else:
        assert padded is None and spans is entry.spans


# ---------------------------------------------------------------- sliders and guidance

def test_knobs_at_one_are_the_unpatched_model(env):
    from kontext_sliders.nodes.knobs import instruction_guidance_model, instruction_sliders_model
    conditioning = encode_lines(env)
    positive = env["edit"](conditioning)
    plain = predict(env["patcher"], env, positive)[0]
    assert torch.equal(predict(instruction_sliders_model(env["patcher"], conditioning, "1, 1, 1"), env, positive)[0],
                       plain)
    assert torch.equal(predict(instruction_guidance_model(env["patcher"], conditioning, "1, 1, 1"), env, positive)[0],
                       plain)


class _TextProbe:
    """Forward pre-hooks on the first module each block applies to its (patched) text input."""

    def __init__(self, model, check):
        self.seen, self.check = [], check
        dm = model.model.diffusion_model
        blocks = getattr(dm, "double_blocks", None) or dm.transformer_blocks
        self.handles = [b.txt_norm1.register_forward_pre_hook(lambda m, i: self._see(i[0])) for b in blocks]
        self.handles += [b.pre_norm.register_forward_pre_hook(lambda m, i: self._see(i[0]))
                         for b in getattr(dm, "single_blocks", [])]

    def _see(self, txt):
        self.check(txt)
        self.seen.append(1)

    def close(self):
        for h in self.handles:
            h.remove()


def test_slider_zero_puts_the_lines_rows_on_the_pad_state_in_model_rows(env):
    from kontext_sliders.nodes.knobs import instruction_sliders_model
    conditioning = encode_lines(env)
    entry = metadata(conditioning)
    positive = env["edit"](conditioning)
    n = entry.context.shape[1]
    # the pad row in the model's text sequence: [klein] its first pad row; [dev] the model's left zero row 0
    # (the spans shifted by 512 - n); Qwen the appended pad row
    offset, pad = {"flux2-klein": (0, entry.spans.pad_index), "flux2-dev": (512 - n, 0)}.get(env["name"], (0, n))
    start, end = entry.spans.spans[1]
    start, end = start + offset, end + offset

    def on_the_pad_state(txt):
        assert torch.equal(txt[:, start:end], txt[:, pad:pad + 1].expand(-1, end - start, -1))
        assert not torch.equal(txt[:, end], txt[:, pad])  # the next line's first row keeps its own state

    probe = _TextProbe(env["patcher"], on_the_pad_state)
    try:
        out = predict(instruction_sliders_model(env["patcher"], conditioning, "1, 0, 1"), env, positive)[0]
    finally:
        probe.close()
    dm = env["patcher"].model.diffusion_model
    assert len(probe.seen) == len(getattr(dm, "double_blocks", None) or dm.transformer_blocks) + len(
        getattr(dm, "single_blocks", []))
    assert not torch.allclose(out, predict(env["patcher"], env, positive)[0])


def test_slider_effect_grows_with_distance_from_one(env):
    from kontext_sliders.nodes.knobs import instruction_sliders_model
    conditioning = encode_lines(env)
    positive = env["edit"](conditioning)
    plain = predict(env["patcher"], env, positive)[0]
    for values in ([1.0, 0.5, 0.0], [1.0, 2.0, 3.0]):
        d = [float((predict(instruction_sliders_model(env["patcher"], conditioning, f"1, {s}, 1"), env,
                            positive)[0] - plain).abs().mean()) for s in values]
        assert d[0] == 0.0 and all(a < b for a, b in zip(d, d[1:])), (values, d)


def test_a_slider_leaves_one_smoothly_even_with_an_appended_pad_row(env):
    """Just off 1 the output is just off the plain model's: the appended pad row (Qwen-Image-Edit) is hidden
    from attention, so the knob has no step at 1 (it had: about a sixth of its effect at 0)."""
    from kontext_sliders.nodes.knobs import instruction_sliders_model
    conditioning = encode_lines(env)
    positive = env["edit"](conditioning)
    plain = predict(env["patcher"], env, positive)[0]
    d = {s: float((predict(instruction_sliders_model(env["patcher"], conditioning, f"1, {s}, 1"), env, positive)[0]
                   - plain).abs().mean()) for s in (0.0, 0.999)}
    assert 0 < d[0.999] < 0.01 * d[0.0], d


@pytest.mark.parametrize("cfg", [1.0, 2.0])
def test_guidance_is_full_plus_scaled_leave_one_out_differences(env, cfg):
    from kontext_sliders.nodes.knobs import instruction_guidance_model
    conditioning = encode_lines(env)
    entry = metadata(conditioning)
    positive = env["edit"](conditioning)
    negative = env["edit"](plain_encode(env, "blurry")) if cfg != 1.0 else None
    strengths = (0.0, 1.0, 2.5)
    model = instruction_guidance_model(env["patcher"], conditioning, ", ".join(map(str, strengths)))
    _, rows = predict(model, env, positive, negative, cfg)
    _, plain_rows = predict(env["patcher"], env, positive, negative, cfg)
    full = plain_rows["cond"]
    expected = full.clone()
    for (context, _), s in zip(entry.without, strengths):
        if s != 1.0:
            without = predict(env["patcher"], env, env["edit"](without_metadata(conditioning, context)))[1]["cond"]
            expected = expected + (s - 1.0) * (full - without)
    assert torch.allclose(rows["cond"], expected, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(rows["cond"], full, atol=1e-4)
    if cfg != 1.0:
        assert torch.allclose(rows["uncond"], plain_rows["uncond"], atol=1e-5)


def test_another_familys_conditioning_is_refused_naming_both(env):
    from kontext_sliders.nodes.instruction_encode import encode_instructions
    from kontext_sliders.nodes.knobs import instruction_guidance_model, instruction_sliders_model
    flux1 = encode_instructions(F.tiny_flux_clip(seed=3), "make the sky stormy\nturn the car red")
    display = env["family"].DISPLAY
    for make in (instruction_sliders_model, instruction_guidance_model):
        with pytest.raises(ValueError, match=rf"FLUX\.1.*{display.split(' ')[0]}"):
            make(env["patcher"], flux1, "1, 0")
    with pytest.raises(ValueError, match="Qwen-Image-Edit"):
        encode_instructions(F.tiny_flux_clip(seed=3), "a\nb", image1=torch.rand(1, 8, 8, 3))
    # and the other way round: this family's conditioning on a FLUX.1 model
    flux1_model = F.comfy_patcher(F.tiny_bfl_state_dict(seed=0, pooled_dim=F.TINY_CLIP_L_POOLED))
    with pytest.raises(ValueError, match=rf"{display.split(' ')[0]}.*FLUX\.1"):
        instruction_sliders_model(flux1_model, encode_lines(env), "1, 0, 1")


def test_a_sweep_over_a_line_equals_single_runs(env):
    """Each frame of a Sweep Sampler over line 2 equals a KSampler run at that value."""
    import nodes
    from kontext_sliders.core.sweep import Sweep
    from kontext_sliders.nodes.knobs import instruction_sliders_model
    from kontext_sliders.nodes.sweep.sampler import sample_sweep
    conditioning = encode_lines(env)
    positive = env["edit"](conditioning)
    latent = {"samples": env["x"][:1] * 0.5}
    values = [0.0, 1.0, 2.5]
    frames, _ = sample_sweep(instruction_sliders_model(env["patcher"], conditioning, "1, 1, 1"), positive, [], latent,
                             Sweep(tuple(values), instruction_index=1), 7, 2, 1.0, "euler", "simple", 1.0, 0, "last")
    # Qwen-Image-Edit: the frame at 1 shares its forward with frames that need the appended pad row, which no
    # query attends to, so it is the single run at 1 too
    for frame, v in zip(frames["samples"], values):
        model = instruction_sliders_model(env["patcher"], conditioning, f"1, {v}, 1")
        single = nodes.common_ksampler(model, 7, 2, 1.0, "euler", "simple", positive, [], latent)[0]["samples"]
        assert torch.allclose(frame, single[0], atol=2e-5, rtol=1e-5), (v, (frame - single[0]).abs().max())
    assert (frames["samples"][0] - frames["samples"][-1]).abs().max() > 1e-3


def test_a_klein_prompt_that_fills_its_512_rows_gets_one_appended_pad(env):
    if env["name"] != "flux2-klein":
        pytest.skip("[klein] pads to 512 rows; a prompt may leave none")
    from kontext_sliders.nodes.knobs import instruction_sliders_model
    conditioning = encode_lines(env, "add a " + " ".join(["very"] * 520) + " tall tree\nremove the bench")
    entry = metadata(conditioning)
    n = entry.context.shape[1]
    assert n > 512 and entry.spans.pad_index is None
    spans, padded = entry.slider_target()
    assert padded.shape[1] == n + 1 == spans.length and spans.pad_index == n
    assert torch.allclose(padded[:, :n], entry.context, atol=1e-5)  # a causal LM: the earlier rows are the prompt's
    positive = env["edit"](conditioning)
    out = predict(instruction_sliders_model(env["patcher"], conditioning, "1, 0"), env, positive)[0]
    assert torch.isfinite(out).all() and not torch.allclose(out, predict(env["patcher"], env, positive)[0])
