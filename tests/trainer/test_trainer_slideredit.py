"""SliderEdit training at a tiny size on the CPU: the diffusers-side adapter, PPS / SPPS, resume, 2 ranks, export."""
from __future__ import annotations

import torch
import pytest

pytest.importorskip("diffusers")
pytest.importorskip("accelerate")

from test_trainer import cli, write_config  # noqa: E402

from kontext_sliders.core.slideredit.weights import STLORA_TARGETS
from kontext_sliders.core.slideredit.lora import stlora_token_scales  # noqa: E402
from kontext_sliders.trainer.methods.slideredit.model import SliderEditAdapter, SliderEditModel  # noqa: E402

TINY = {"patch_size": 1, "in_channels": 12, "num_layers": 2, "num_single_layers": 1, "attention_head_dim": 16,
        "num_attention_heads": 2, "joint_attention_dim": 32, "pooled_projection_dim": 32, "guidance_embeds": True,
        "axes_dims_rope": [4, 6, 6]}
L_TEXT = 9


def tiny_transformer(seed: int = 0):
    from diffusers import FluxTransformer2DModel
    torch.manual_seed(seed)
    return FluxTransformer2DModel(**TINY).requires_grad_(False).eval()


def inputs(batch: int = 2, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return dict(noisy=torch.randn(batch, 3, 8, 8, generator=g), source=torch.randn(batch, 3, 8, 8, generator=g),
                sigma=torch.rand(batch, generator=g), context=torch.randn(batch, L_TEXT, 32, generator=g),
                pooled=torch.randn(batch, 32, generator=g))


def randomise_(adapter: SliderEditAdapter, seed: int = 2) -> SliderEditAdapter:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return adapter


# ---------------------------------------------------------------- the adapter

@pytest.mark.parametrize("variant", ["stlora", "gstlora"])
def test_adapter_off_or_at_zero_is_the_base_bit_for_bit(variant):
    from kontext_sliders.trainer.families.flux1 import kontext_velocity
    x = inputs()
    reference = kontext_velocity(tiny_transformer(), x["noisy"], x["source"], x["sigma"], x["context"],
                                 x["pooled"], 3.5)
    transformer = tiny_transformer()
    model = SliderEditModel(transformer, randomise_(SliderEditAdapter(transformer, variant, rank=4)))
    with torch.no_grad():
        assert torch.equal(model(**x, scales=None), reference)
        assert torch.equal(model(**x, scales=torch.zeros(2)), reference)
        if variant == "stlora":
            assert torch.equal(model(**x, scales=torch.zeros(2, L_TEXT)), reference)
        assert not torch.allclose(model(**x, scales=torch.ones(2)), reference, atol=1e-4)  # it does act


def test_stlora_leaves_every_token_outside_the_spans_exactly_base_in_every_adapted_linear():
    transformer = tiny_transformer()
    adapter = randomise_(SliderEditAdapter(transformer, "stlora", rank=4))
    model = SliderEditModel(transformer, adapter)
    seen = {}

    def record(name):
        def hook(module, inp, out):
            seen[name] = (inp[0].detach(), out.detach(), module)
        return hook

    handles = [m.register_forward_hook(record(n)) for n, m in transformer.named_modules()
               if n.endswith(STLORA_TARGETS) and n.startswith("transformer_blocks.")]
    assert len(handles) == 2 * 6  # 2 double blocks x the six text-stream Linears
    # row 0: line 1 at 2:5 strength 0 (alpha 1), line 2 at 5:7 strength 1.5 (alpha -0.5); row 1: one span 1:3
    scales = torch.stack([stlora_token_scales([(2, 5), (5, 7)], [0.0, 1.5], L_TEXT),
                          stlora_token_scales([(1, 3)], [0.25], L_TEXT)])
    with torch.no_grad():
        model(**inputs(), scales=scales)
    inside = scales != 0
    assert inside.sum() == 7
    for name, (x, out, module) in seen.items():  # runs after the adapter's hook: `out` is the adapted output
        base = torch.nn.functional.linear(x, module.weight, module.bias)
        assert torch.equal(out[~inside], base[~inside]), name
        assert (out[inside] - base[inside]).abs().amax(-1).min() > 1e-6, name  # each span token moved
    for h in handles:
        h.remove()


@pytest.mark.parametrize("variant", ["stlora", "gstlora"])
def test_adapter_round_trips_through_slideredit_weights(variant, tmp_path):
    from kontext_sliders.core.slideredit.weights import load_slideredit, save_slideredit
    transformer = tiny_transformer()
    adapter = randomise_(SliderEditAdapter(transformer, variant, rank=4, alpha=2.0))
    weights = adapter.to_weights(base_model="tiny", context_in_dim=32)
    expected = {"stlora": 2 * 6, "gstlora": 2 * 12 + 3}[variant]  # gstlora: attn.to_q/k/v hit the single block too
    assert weights.variant == variant and weights.rank == 4 and weights.scale == 0.5
    assert len(weights.modules) == expected
    save_slideredit(weights, tmp_path / "a.safetensors")
    other = tiny_transformer()
    again = SliderEditAdapter.from_weights(other, load_slideredit(tmp_path / "a.safetensors"))
    x = inputs()
    scales = torch.tensor([1.0, -0.5])
    with torch.no_grad():
        a = SliderEditModel(transformer, adapter)(**x, scales=scales)
        b = SliderEditModel(other, again)(**x, scales=scales)
    assert torch.equal(a, b)


def test_adapter_rejects_image_targets_for_stlora_and_token_scales_on_image_linears():
    with pytest.raises(ValueError, match="stlora cannot target 'attn.to_q'"):
        SliderEditAdapter(tiny_transformer(), "stlora", targets=["attn.to_q"])
    transformer = tiny_transformer()
    model = SliderEditModel(transformer, SliderEditAdapter(transformer, "gstlora", rank=2))
    with pytest.raises(ValueError, match="per-token scales"):
        model(**inputs(), scales=torch.ones(2, L_TEXT))


# ---------------------------------------------------------------- data, config, the training step

LINES = [["make the sky stormy", "turn the car red"], ["make it brighter", "add snow", "blur the background"],
         ["make it brighter"]]


@pytest.fixture()
def edits(tmp_path):
    import numpy as np
    from PIL import Image
    from kontext_sliders.trainer.data.edits import EditSample, write_edits
    root = tmp_path / "edits"
    root.mkdir()
    rng = np.random.default_rng(0)
    samples = []
    for i, lines in enumerate(LINES):
        Image.fromarray((rng.uniform(0, 1, (16, 16, 3)) * 255).astype(np.uint8)).save(root / f"e{i}.png")
        samples.append(EditSample(f"e{i}", f"e{i}.png", tuple(lines)))
    write_edits(root, samples)
    return root


def slideredit_config(edits, out, variant: str = "stlora", **run) -> dict:
    return {
        "method": "slideredit",
        "model": {"scratch": TINY, "gradient_checkpointing": False},
        "slideredit": {"variant": variant, "rank": 4},
        "data": {"edits": [str(edits)], "pixel_space": True, "text_encoder": "learned", "resolution": 16,
                 "learned_text_tokens": 2},
        "optim": {"lr": 1e-2, "grad_clip": 0.0},
        "run": {"output_dir": str(out), "max_steps": 4, "batch_size": 2, "checkpoint_every": 2,
                "mixed_precision": "no", "progress": False, "sample_steps": 2, "validation_pairs": 1,
                "validation_strengths": [0.0, 1.0, 2.0], **run},
    }


def prepared(edits, tmp_path, variant="stlora", **slideredit):
    from test_trainer import prepared_method
    raw = slideredit_config(edits, tmp_path / "out", variant)
    raw["slideredit"].update(slideredit)
    return prepared_method(raw, tmp_path / "cache")


def test_pps_rows_spans_and_teacher_prompts(edits, tmp_path):
    method, _ = prepared(edits, tmp_path)
    assert [s.lines for s in method.dataset.samples] == [tuple(x) for x in LINES]
    assert len(method.dataset.samples[1].kept) == 2 ** 3 - 1  # every proper subset of 3 lines, () included
    rows = [r for step in range(50) for r in method.rows(0, step, 4)]
    assert method.rows(0, 7, 4) == method.rows(0, 7, 4) != method.rows(0, 8, 4)
    three = [r.suppressed for r in rows if r.sample == 1]
    assert {len(s) for s in three} == {1, 2, 3} and len(set(three)) == 7  # 1 ... K suppressed, any of them
    row = next(r for r in rows if r.sample == 1 and r.suppressed == (0, 2))
    batch = method.load([row], torch.device("cpu"))
    # learned text: 2 tokens per line, end token at 6, pads after; line 1 at 0:2, line 3 at 4:6
    assert batch["scales"][0].tolist() == [1, 1, 0, 0, 1, 1, 0]
    from kontext_sliders.trainer.engine.features import LineTextEncoder
    encoder = LineTextEncoder(2, 3, 32, 32)
    assert torch.equal(batch["teacher_context"][0], encoder.encode_lines(["add snow"])["context"])
    assert torch.equal(batch["context"][0], encoder.encode_lines(LINES[1])["context"])
    all_row = next(r for r in rows if r.sample == 1 and r.suppressed == (0, 1, 2))
    empty = method.load([all_row], torch.device("cpu"))
    assert torch.equal(empty["teacher_context"][0], encoder.encode_lines([])["context"])  # the empty prompt
    assert torch.equal(empty["teacher_pooled"][0], torch.zeros(32))


@pytest.mark.parametrize("variant", ["stlora", "gstlora"])
def test_a_few_steps_reduce_the_pps_loss_on_a_fixed_batch(edits, tmp_path, variant):
    from kontext_sliders.trainer.engine.loop import make_optimizer
    method, model = prepared(edits, tmp_path, variant)
    method.config.optim.lr = 5e-2
    optimizer, _ = make_optimizer(method.config, [p for p in model.parameters() if p.requires_grad])
    batch = method.load(method.rows(0, 0, 4), torch.device("cpu"))
    losses = []
    for _ in range(30):
        loss = method.loss(model, batch)
        losses.append(float(loss.detach()))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    print(variant, "loss", losses[0], "->", losses[-1])
    assert losses[0] > 0 and losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("variant", ["stlora", "gstlora"])
def test_teacher_batched_with_the_student_equals_two_forwards(edits, tmp_path, variant):
    from kontext_sliders.trainer.methods.slideredit.method import pps_loss
    method, model = prepared(edits, tmp_path, variant)
    randomise_(model.adapter)  # B != 0: the student differs from the teacher
    batch = method.load(method.rows(0, 3, 4), torch.device("cpu"))
    grads = []
    for batched in (True, False):
        loss = pps_loss(model, batch, batch_teacher=batched)
        loss.backward()
        grads.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
        model.zero_grad()
    (a, ga), (b, gb) = grads
    assert a > 1e-4
    torch.testing.assert_close(a, b, rtol=1e-5, atol=0)
    assert ga.keys() == gb.keys() and len(ga) == len(list(model.adapter.parameters()))
    for name in ga:
        torch.testing.assert_close(ga[name], gb[name], rtol=1e-4, atol=1e-7, msg=name)



@pytest.mark.parametrize("batched", [True, False])
def test_gradient_checkpointing_keeps_the_scales_for_the_recompute(edits, tmp_path, batched):
    from kontext_sliders.trainer.methods.slideredit.method import pps_loss
    method, model = prepared(edits, tmp_path, "stlora")
    randomise_(model.adapter)
    batch = method.load(method.rows(0, 5, 3), torch.device("cpu"))
    grads = []
    for checkpointing in (False, True):
        if checkpointing:
            model.transformer.enable_gradient_checkpointing()
        model.train()
        pps_loss(model, batch, batch_teacher=batched).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        model.zero_grad()
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) == len(list(model.adapter.parameters()))
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-8, msg=name)


# ---------------------------------------------------------------- whole runs: resume, 2 ranks, validation, export

@pytest.mark.slow  # processes killed / launched: tens of seconds each
def test_sigkill_mid_step_then_resume_equals_an_uninterrupted_run(edits, tmp_path):
    from test_trainer import killed_then_resumed
    a, b = killed_then_resumed(write_config(tmp_path / "straight.yaml", slideredit_config(edits, tmp_path / "straight")),
                               write_config(tmp_path / "killed.yaml", slideredit_config(edits, tmp_path / "killed")),
                               4, 2)
    assert all(k.startswith("adapter.pairs.") for k in a)
    assert any(k.endswith(".B") and a[k].abs().max() > 0 for k in a)  # it trained (B starts at zero)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # validation: one strip per sub-instruction of the first sample: source + 3 strengths
    strips = sorted(p.name for p in (tmp_path / "straight" / "validation" / "step-00000004").glob("*.png"))
    assert strips == ["sample0-line1.png", "sample0-line2.png"]
    from PIL import Image
    with Image.open(tmp_path / "straight" / "validation" / "step-00000004" / "sample0-line1.png") as im:
        assert im.size == (16 * 4, 16)


@pytest.mark.slow  # processes killed / launched: tens of seconds each
def test_two_process_run_keeps_identical_weights_and_equals_one_process(edits, tmp_path):
    from safetensors.torch import load_file
    from test_trainer import launch_two_processes
    from kontext_sliders.trainer.engine.checkpoint import latest_checkpoint
    launch_two_processes(write_config(tmp_path / "ddp.yaml", slideredit_config(edits, tmp_path / "ddp", "gstlora",
                                                                               batch_size=1)))
    single = write_config(tmp_path / "single.yaml", slideredit_config(edits, tmp_path / "single", "gstlora",
                                                                      batch_size=2))
    assert cli("train", "--config", str(single)).returncode == 0
    a = load_file(latest_checkpoint(tmp_path / "ddp") / "trainable.safetensors")
    b = load_file(latest_checkpoint(tmp_path / "single") / "trainable.safetensors")
    assert a.keys() == b.keys()
    # 2 ranks x batch 1 = 1 process x batch 2, to float noise: the gradients are ~1e-6 (the loss is ~1e-3), so
    # Adam's steps (lr 1e-2 each) turn the all-reduce's rounding into ~1e-5; other rows would move them ~1e-2
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-4, msg=k)


@pytest.mark.parametrize("variant", ["stlora", "gstlora"])
def test_export_our_format_and_the_authors_layout_load_back_equal(edits, tmp_path, variant, capsys):
    from safetensors.torch import load_file
    from kontext_sliders.core.slideredit.weights import AUTHORS_GSTLORA, AUTHORS_STLORA_SAFETENSORS, load_slideredit
    from kontext_sliders.trainer.engine.checkpoint import latest_checkpoint
    from kontext_sliders.trainer.engine.config import config_from_dict
    from kontext_sliders.trainer.engine.loop import train
    result = train(config_from_dict(slideredit_config(edits, tmp_path / "run", variant, max_steps=2,
                                                      validate_every=0)))
    assert result.steps == 2 and result.skipped == {}
    trainable = load_file(latest_checkpoint(tmp_path / "run") / "trainable.safetensors")
    from kontext_sliders.trainer.cli import main
    capsys.readouterr()
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "se.safetensors"), "--official-dir",
                 str(tmp_path / "authors")]) == 0
    assert f"exported SliderEdit {variant.upper()} rank 4" in capsys.readouterr().out
    ours = load_slideredit(tmp_path / "se.safetensors")
    authors = load_slideredit(tmp_path / "authors")
    assert (tmp_path / "authors" / (AUTHORS_STLORA_SAFETENSORS if variant == "stlora" else AUTHORS_GSTLORA)).is_file()
    for weights in (ours, authors):
        assert weights.variant == variant and weights.rank == 4 and weights.scale == 1.0
        assert len(weights.modules) * 2 == len(trainable)
        for module, (a, b) in weights.modules.items():
            key = "adapter.pairs." + module.replace(".", "/")
            assert torch.equal(a, trainable[key + ".A"]) and torch.equal(b, trainable[key + ".B"]), module
    assert ours.context_in_dim == 32 and ours.base_model == "scratch"
    # and the file drives a fresh adapter exactly like the trained one
    transformer = tiny_transformer()
    model = SliderEditModel(transformer, SliderEditAdapter.from_weights(transformer, ours))
    assert model(**inputs(), scales=torch.ones(2)).isfinite().all()


# ---------------------------------------------------------------- config

def test_slideredit_config_defaults_and_errors(edits, tmp_path):
    from kontext_sliders.trainer.engine.config import ConfigError, check_ready_to_train, config_from_dict, load_config
    c = load_config(None, ["method=slideredit"])
    s = c.slideredit
    assert (s.variant, s.loss, s.rank, s.alpha, s.targets, s.neutral_prompt) == (
        "stlora", "pps", 16, None, None, "keep the image the same")
    assert load_config(None, ["method=slideredit", "slideredit.variant=gstlora"]).slideredit.loss == "spps"
    bad = [
        (["slideredit.varient=stlora"], "unknown setting.*slideredit.varient"),
        (["slideredit.variant=lora"], "slideredit.variant must be one of stlora, gstlora, got 'lora'"),
        (["slideredit.loss=mse"], "slideredit.loss must be pps or spps"),
        (["slideredit.variant=gstlora", "slideredit.loss=pps"], "loss pps needs variant stlora"),
        (["slideredit.rank=many"], "slideredit.rank: 'many' is not a valid int"),
        (["slideredit.rank=0"], "slideredit.rank must be a positive integer"),
        (["slideredit.alpha=big"], "slideredit.alpha must be a positive number or null"),
        (["slideredit.targets=attn.to_q"], "slideredit.targets must be a list"),
        (["slideredit.targets=[attn.to_q]"], "slideredit.targets: stlora cannot target 'attn.to_q'"),
        (["slideredit.batch_teacher=maybe"], "slideredit.batch_teacher must be true or false"),
        (["slideredit.max_lines=20"], "slideredit.max_lines must be 1 ... 8"),
    ]
    for overrides, message in bad:
        with pytest.raises(ConfigError, match=message) as e:
            load_config(None, ["method=slideredit", *overrides])
        assert "\n" not in str(e.value)
    assert load_config(None, ["slideredit.variant=gstlora", "slideredit.targets=[attn.to_q, proj_mlp]"]
                       ).slideredit.targets == ["attn.to_q", "proj_mlp"]
    raw = slideredit_config(edits, tmp_path / "out")
    raw["data"]["edits"] = []
    with pytest.raises(ConfigError, match="data.edits and data.trajectories are empty"):
        check_ready_to_train(config_from_dict(raw))
    raw["data"]["edits"] = [str(tmp_path / "nope")]
    with pytest.raises(ConfigError, match="data.edits: no such folder"):
        check_ready_to_train(config_from_dict(raw))


def test_trajectory_folders_read_as_samples_and_bad_samples_are_counted(edits, tmp_path):
    from kontext_sliders.trainer.engine.config import config_from_dict
    from kontext_sliders.trainer.data.trajectories import Frame, Trajectory, write_manifest
    from kontext_sliders.trainer.engine.features import FeatureCache
    from kontext_sliders.trainer.methods.slideredit.method import SliderEditMethod
    traj = tmp_path / "traj"
    traj.mkdir()
    (traj / "s.png").write_bytes((edits / "e0.png").read_bytes())
    write_manifest(traj, [Trajectory("t", "s.png", "add snow\nmake it brighter", (Frame("s.png", 0), Frame("s.png", 1))),
                          Trajectory("gone", "missing.png", "add snow", (Frame("s.png", 0), Frame("s.png", 1)))])
    (edits / "e2.png").write_bytes(b"not a png")
    raw = slideredit_config(edits, tmp_path / "out")
    raw["data"]["trajectories"] = [str(traj)]
    raw["slideredit"]["max_lines"] = 2
    method = SliderEditMethod(config_from_dict(raw))
    method.prepare(FeatureCache(tmp_path / "cache"), torch.device("cpu"), progress=False)
    assert [s.lines for s in method.dataset.samples] == [tuple(LINES[0]), ("add snow", "make it brighter")]
    assert method.skipped == {"sample with more sub-instructions than slideredit.max_lines": 1,
                              "unreadable image": 2, "sample without a readable image": 2}


# ---------------------------------------------------------------- the FLUX text path (a tiny real T5 tokenizer)

@pytest.fixture(scope="module")
def kontext(tmp_path_factory):
    pytest.importorskip("transformers")
    from test_trainer_flux_pipeline import build_tiny_kontext
    return build_tiny_kontext(tmp_path_factory.mktemp("kontext"))


def test_flux_text_spans_are_the_lines_t5_ids_without_the_end_token(kontext):
    from kontext_sliders.trainer.families.flux1 import FluxTextEncoder
    encoder = FluxTextEncoder(str(kontext), torch.device("cpu"), torch.float32)
    lines = ["make the sky stormy", "turn the car red", "sky"]
    features = encoder.encode_lines(lines)
    assert torch.equal(features["context"], encoder.encode("make the sky stormy turn the car red sky")["context"])
    tokenizer = encoder.pipe.tokenizer_2
    ids = tokenizer("make the sky stormy turn the car red sky").input_ids
    spans = [tuple(s) for s in features["spans"].tolist()]
    for (start, end), line in zip(spans, lines):
        assert ids[start:end] == tokenizer(line).input_ids[:-1]
    # letter-level T5 pieces: line 1 = 16 ids, line 2 = 13; "sky" is found at its first occurrence (in line 1)
    assert spans == [(0, 16), (16, 29), (7, 10)]
    assert ids[-1] == tokenizer.eos_token_id and all(end < len(ids) for _, end in spans)  # </s> never in a span



def test_train_on_the_pretrained_folder_vae_and_t5_path(kontext, edits, tmp_path):
    """FLUX's VAE latents, T5 + CLIP features with T5 spans, a frozen pretrained base, gradient checkpointing."""
    from diffusers import FluxTransformer2DModel
    from safetensors.torch import load_file
    from kontext_sliders.trainer.engine.checkpoint import latest_checkpoint
    from kontext_sliders.trainer.engine.config import config_from_dict
    from kontext_sliders.trainer.engine.loop import train
    raw = slideredit_config(edits, tmp_path / "run", max_steps=2, checkpoint_every=2)
    raw["model"] = {"pretrained": str(kontext), "gradient_checkpointing": True}
    raw["data"].update(text_encoder="flux", pixel_space=False)
    result = train(config_from_dict(raw))
    assert result.steps == 2 and result.skipped == {} and result.last_loss > 0
    trained = load_file(latest_checkpoint(tmp_path / "run") / "trainable.safetensors")
    base = FluxTransformer2DModel.from_pretrained(kontext, subfolder="transformer")
    assert len(trained) == 2 * 6 * base.config.num_layers  # STLoRA: six text-stream Linears per double block
    assert all(trained[k].abs().max() > 0 for k in trained if k.endswith(".B"))  # every B learnt from zero
    strips = sorted(p.name for p in (tmp_path / "run" / "validation" / "step-00000002").glob("*.png"))
    assert strips == ["sample0-line1.png", "sample0-line2.png"]
