"""NumeriKontrol training at a tiny size on the CPU: the diffusers-side injection, data, resume, 2 ranks, export."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("accelerate")
pytest.importorskip("peft")

from kontext_sliders.core.numeric import DEFAULT_REGISTRY, AdapterConfig, NumericAdapter  # noqa: E402
from kontext_sliders.trainer.families.flux1 import kontext_velocity  # noqa: E402
from kontext_sliders.trainer.methods.numeric.method import encoder_text  # noqa: E402
from kontext_sliders.trainer.methods.numeric.model import (NumericModel, add_numeric_lora, image_token_count,
                                                           numeric_attention_mask)

TINY = {"patch_size": 1, "in_channels": 12, "num_layers": 2, "num_single_layers": 1, "attention_head_dim": 16,
        "num_attention_heads": 2, "joint_attention_dim": 32, "pooled_projection_dim": 32, "guidance_embeds": True,
        "axes_dims_rope": [4, 6, 6]}
ADAPTER = AdapterConfig(encoder_width=16, embed_width=16, decoder_width=16, out_dim=32)
L_TEXT = 5
EXPOSURE, HUE, BLUR = (DEFAULT_REGISTRY.task_id(n) for n in ("exposure", "hue", "blur"))


def randomise_(module: torch.nn.Module, seed: int = 2, std: float = 0.3) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(module.named_parameters()):
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return module


def tiny_model(seed: int = 0, rank: int = 4) -> NumericModel:
    from diffusers import FluxTransformer2DModel
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(**TINY).requires_grad_(False).eval()
    add_numeric_lora(transformer, rank=rank)
    model = NumericModel(transformer, NumericAdapter(DEFAULT_REGISTRY, ADAPTER), guidance=1.0)
    return randomise_(model)  # LoRA B != 0: the LoRA acts too


def inputs(batch: int = 2, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return dict(noisy=torch.randn(batch, 3, 8, 8, generator=g), source=torch.randn(batch, 3, 8, 8, generator=g),
                sigma=torch.rand(batch, generator=g), context=torch.randn(batch, L_TEXT, 32, generator=g),
                pooled=torch.randn(batch, 32, generator=g))


# ---------------------------------------------------------------- the injection

def test_one_edit_is_the_plain_call_with_the_token_in_front_bit_for_bit():
    model = tiny_model()
    x = inputs()
    edits = [[(EXPOSURE, 1.5)], [(HUE, -45.0)]]
    with torch.no_grad():
        out = model(**x, edits=edits)
        z = model.adapter(torch.tensor([EXPOSURE, HUE]), torch.tensor([1.5, -45.0], dtype=torch.float64))
        by_hand = kontext_velocity(model.transformer, x["noisy"], x["source"], x["sigma"],
                                   torch.cat([z.unsqueeze(1), x["context"]], dim=1), x["pooled"], 1.0)
        # the mask of one numeric token is all open; passing it would only add float noise
        everything = torch.ones(1, 1, 1 + L_TEXT + 32, 1 + L_TEXT + 32, dtype=torch.bool)
        open_mask = kontext_velocity(model.transformer, x["noisy"], x["source"], x["sigma"],
                                     torch.cat([z.unsqueeze(1), x["context"]], dim=1), x["pooled"], 1.0, everything)
    assert numeric_attention_mask(1, L_TEXT, 32) is None
    assert image_token_count(x["noisy"], x["source"]) == 32
    assert torch.equal(out, by_hand)
    torch.testing.assert_close(open_mask, out, rtol=1e-5, atol=1e-5)


def test_the_order_of_a_rows_edits_does_not_matter_and_the_mask_acts():
    model = tiny_model()
    x = inputs(batch=1)
    edits = [(EXPOSURE, 1.5), (HUE, -45.0), (BLUR, 2.0)]
    with torch.no_grad():
        a = model(**x, edits=[edits])
        b = model(**x, edits=[edits[::-1]])
        c = model(**x, edits=[[edits[1], edits[2], edits[0]]])
        unmasked = model.velocity(**x, tokens=model.tokens([edits], torch.device("cpu")), mask=False)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-5)
    assert (a - unmasked).abs().max() > 1e-4  # numeric tokens that see each other give another result
    mask = numeric_attention_mask(3, L_TEXT, 32)[0, 0]
    assert mask.shape == (40, 40) and not mask[0, 1] and not mask[2, 0] and mask[0, 0] and mask[3:].all()


def test_a_tokens_content_matters():
    model = tiny_model()
    x = inputs()
    with torch.no_grad():
        base = model(**x, edits=[[(EXPOSURE, 1.5)], [(HUE, -45.0)]])
        delta = model(**x, edits=[[(EXPOSURE, -1.5)], [(HUE, -45.0)]])
        task = model(**x, edits=[[(BLUR, 1.5)], [(HUE, -45.0)]])
    assert (delta[0] - base[0]).abs().max() > 1e-4 and torch.equal(delta[1], base[1])
    assert (task[0] - base[0]).abs().max() > 1e-4


def test_rows_with_different_edit_counts_equal_each_row_alone():
    model = tiny_model()
    x = inputs(batch=3)
    edits = [[(EXPOSURE, 1.5)], [(HUE, -45.0), (BLUR, 2.0)], [(EXPOSURE, -0.5)]]
    with torch.no_grad():
        together = model(**x, edits=edits)
        alone = torch.cat([model(**{k: v[i:i + 1] for k, v in x.items()}, edits=[edits[i]]) for i in range(3)])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="row 1 has no numeric edit"):
        model(**inputs(), edits=[[(EXPOSURE, 1.0)], []])


def test_a_plain_row_is_the_transformer_alone_and_only_when_asked():
    """A replayed base row (no edit, ``plain_rows``) is the transformer on its text alone, bit for bit, also
    beside rows with tokens."""
    model = tiny_model()
    x = inputs(batch=3)
    edits = [[(EXPOSURE, 1.5)], [], [(HUE, -45.0)]]
    with torch.no_grad():
        mixed = model(**x, edits=edits, plain_rows=True)
        plain = kontext_velocity(model.transformer, x["noisy"][1:2], x["source"][1:2], x["sigma"][1:2],
                                 x["context"][1:2], x["pooled"][1:2], 1.0)
        tokened = model(**{k: v[[0, 2]] for k, v in x.items()}, edits=[edits[0], edits[2]])
    assert torch.equal(mixed[1:2], plain)
    torch.testing.assert_close(mixed[[0, 2]], tokened, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="row 1 has no numeric edit"):
        model(**x, edits=edits)


def test_replay_swaps_about_its_fraction_of_rows_and_keeps_the_others_as_drawn():
    from kontext_sliders.trainer.methods.numeric.method import numeric_rows_for_step, replay_rows
    rows = numeric_rows_for_step(3, 7, 400, [5, 5, 5])
    mixed = replay_rows(rows, 3, 7, 0.25, 11)
    assert mixed == replay_rows(rows, 3, 7, 0.25, 11)  # a pure function of (seed, step)
    swapped = [i for i, r in enumerate(mixed) if r.replay is not None]
    assert 60 <= len(swapped) <= 140 and all(0 <= mixed[i].replay < 11 for i in swapped)
    assert all(mixed[i] == rows[i] for i in range(400) if i not in swapped)
    assert all((mixed[i].sigma, mixed[i].noise_seed) == (rows[i].sigma, rows[i].noise_seed) for i in swapped)
    assert replay_rows(rows, 3, 7, 0.0, 11) == rows


def test_lora_sits_on_qkv_of_both_streams_and_the_single_blocks():
    model = tiny_model(rank=4)
    adapted = sorted({n.split(".lora_A")[0] for n, _ in model.transformer.named_parameters() if ".lora_A." in n})
    double = [f"transformer_blocks.{i}.attn.{s}" for i in range(2)
              for s in ("add_k_proj", "add_q_proj", "add_v_proj", "to_k", "to_q", "to_v")]
    assert adapted == sorted(double + [f"single_transformer_blocks.0.attn.{s}" for s in ("to_k", "to_q", "to_v")])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if "lora_" in n or n.startswith("adapter.")}


# ---------------------------------------------------------------- data, rows, the training step

@pytest.fixture(scope="module")
def cat_data(tmp_path_factory):
    """A tiny `synth cat` folder: exposure (a difference, EV) and contrast (a factor) on two photos, 4 frames."""
    pytest.importorskip("skimage")
    from kontext_sliders.trainer.data import cat
    root = tmp_path_factory.mktemp("cat")
    cat.synthesize(root, cat.skimage_photos(["astronaut", "coffee"], size=16),
                   [cat.get_task("exposure"), cat.get_task("contrast")], frames=4, seed=0)
    return root


def numeric_config(data, out, **run) -> dict:
    return {
        "method": "numeric",
        "model": {"scratch": TINY, "gradient_checkpointing": False},
        "numeric": {"encoder_width": 16, "embed_width": 16, "decoder_width": 16, "rank": 4},
        "data": {"trajectories": [str(data)], "pixel_space": True, "text_encoder": "learned", "resolution": 16,
                 "learned_text_tokens": 2},
        "optim": {"lr": 1e-3},
        "run": {"output_dir": str(out), "max_steps": 4, "batch_size": 2, "checkpoint_every": 2,
                "mixed_precision": "no", "progress": False, "sample_steps": 2, "validation_pairs": 1, **run},
    }


def prepared(data, tmp_path, **numeric):
    from test_trainer import prepared_method
    raw = numeric_config(data, tmp_path / "out")
    raw["numeric"].update(numeric)
    return prepared_method(raw, tmp_path / "cache")


def test_rows_are_pure_frame_pairs_of_one_trajectory_with_deltas_and_texts_from_the_registry(cat_data, tmp_path):
    from kontext_sliders.core.numeric import parse_line
    from kontext_sliders.trainer.engine.features import LineTextEncoder
    method, _ = prepared(cat_data, tmp_path)
    assert len(method.dataset.trajectories) == 4 and method.skipped == {}
    # exposure: deltas k/3 * 2 EV between any two of 4 frames -> 7 texts; contrast: factors (1 + b/3) / (1 + a/3);
    # no change worded both ways: one more text per task
    assert len(method.dataset.text_keys) == 7 + 13 + 2
    assert method.rows(0, 7, 4) == method.rows(0, 7, 4) != method.rows(0, 8, 4)
    rows = [r for step in range(60) for r in method.rows(0, step, 4)]
    assert {r.source for r in rows} == {r.target for r in rows} == {0, 1, 2, 3}
    batch = method.load(rows[:16], torch.device("cpu"))
    encoder = LineTextEncoder(2, 3, 32, 32)
    signs = set()
    for i, r in enumerate(rows[:16]):
        traj = method.dataset.trajectories[r.trajectory]
        task = DEFAULT_REGISTRY.task(traj.task)
        (task_id, delta), = batch["edits"][i]
        assert task_id == DEFAULT_REGISTRY.task_id(traj.task)
        assert delta == pytest.approx(task.delta_between(traj.values[r.source], traj.values[r.target]), rel=1e-5)  # 6 digits
        line = task.render(delta, r.decrease_wording)
        assert r.decrease_wording <= (r.source == r.target)
        parsed = parse_line(line)
        assert (parsed.task, parsed.delta) == (traj.task, delta)
        # the offline encoder reads the line with its number as '#' (the numeric token carries the value)
        assert torch.equal(batch["context"][i], encoder.encode_lines([encoder_text(method.config, line)])["context"])
        assert torch.equal(batch["source"][i], method._image(traj.frames[r.source]))
        assert torch.equal(batch["target"][i], method._image(traj.frames[r.target]))
        signs.add(task.direction(delta))
    assert signs == {-1, 0, 1}
    # no-change pairs: both wordings, about half each; pairs that change something: their own wording only
    same = [r for r in rows if r.source == r.target]
    assert 0.25 < sum(r.decrease_wording for r in same) / len(same) < 0.75
    assert not any(r.decrease_wording for r in rows if r.source != r.target)
    worded = method.load([r for r in same if r.decrease_wording][:1], torch.device("cpu"))
    r = next(r for r in same if r.decrease_wording)
    traj = method.dataset.trajectories[r.trajectory]
    line = DEFAULT_REGISTRY.task(traj.task).render(DEFAULT_REGISTRY.task(traj.task).identity, decrease=True)
    assert line.startswith("Decrease") and worded["edits"][0][0][1] == DEFAULT_REGISTRY.task(traj.task).identity
    assert torch.equal(worded["context"][0], encoder.encode_lines([encoder_text(method.config, line)])["context"])


def test_a_few_steps_reduce_the_loss_on_a_fixed_batch(cat_data, tmp_path):
    from kontext_sliders.trainer.engine.loop import make_optimizer
    method, model = prepared(cat_data, tmp_path)
    method.config.optim.lr = 1e-1
    optimizer, _ = make_optimizer(method.config, [p for p in model.parameters() if p.requires_grad])
    batch = method.load(method.rows(0, 0, 4), torch.device("cpu"))
    losses = []
    for _ in range(15):
        loss = method.loss(model, batch)
        losses.append(float(loss.detach()))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    print("loss", losses[0], "->", losses[-1])
    # a frozen random base, only the tokens and a rank-4 Q/K/V LoRA learn: measured 1.77 -> 1.16
    assert losses[-1] < 0.75 * losses[0], losses


def test_trajectories_without_values_or_task_are_skipped_and_counted(cat_data, tmp_path):
    import json
    import shutil
    from kontext_sliders.trainer.engine.config import config_from_dict
    from kontext_sliders.trainer.engine.features import FeatureCache
    from kontext_sliders.trainer.methods.numeric.method import NumericMethod
    data = tmp_path / "data"
    shutil.copytree(cat_data, data)
    manifest = json.loads((data / "manifest.json").read_text())
    trajs = manifest["trajectories"]
    for frame in trajs[0]["frames"]:
        frame.pop("value")
    trajs[1]["task"] = "rotation"
    trajs[2]["frames"][1]["value"] = None
    (data / "manifest.json").write_text(json.dumps(manifest))
    method = NumericMethod(config_from_dict(numeric_config(data, tmp_path / "out")))
    method.prepare(FeatureCache(tmp_path / "cache"), torch.device("cpu"), progress=False)
    assert [t.id for t in method.dataset.trajectories] == [trajs[3]["id"]]
    assert method.skipped == {"trajectory without frame values": 2,
                              "trajectory whose task is not in the numeric registry": 1}
    trajs[3]["task"] = None
    (data / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="no usable trajectories for numeric training .*trajectory without frame "
                                         "values': 2"):
        NumericMethod(config_from_dict(numeric_config(data, tmp_path / "out"))).prepare(
            FeatureCache(tmp_path / "cache"), torch.device("cpu"), progress=False)


def test_numeric_config_defaults_and_errors(cat_data, tmp_path):
    import json
    from kontext_sliders.core.numeric import DEFAULT_REGISTRY_DATA, Registry
    from kontext_sliders.trainer.engine.config import ConfigError, load_config
    c = load_config(None, ["method=numeric"])
    n = c.numeric
    assert (n.encoder_width, n.embed_width, n.decoder_width, n.frequencies, n.rank, n.alpha, n.targets, n.guidance) \
        == (256, 256, 256, 3, 128, None, None, 1.0)
    assert Registry.from_json(n.registry) == Registry.from_json(DEFAULT_REGISTRY_DATA)  # resolved into the config
    assert load_config(None, ["numeric.rank=8"]).numeric.registry is None  # other methods: untouched
    registry = {**DEFAULT_REGISTRY_DATA, "tasks": DEFAULT_REGISTRY_DATA["tasks"][:2]}
    (tmp_path / "reg.json").write_text(json.dumps(registry))
    own = load_config(None, ["method=numeric", f"numeric.registry={tmp_path / 'reg.json'}"]).numeric
    assert own.task_registry().names == ("exposure", "contrast")
    (tmp_path / "bad.json").write_text("{oops")
    bad = [
        (["numeric.ranks=4"], "unknown setting.*numeric.ranks"),
        (["numeric.rank=0"], "numeric.rank must be a positive integer, got 0"),
        (["numeric.rank=many"], "numeric.rank: 'many' is not a valid int"),
        (["numeric.alpha=-1"], "numeric.alpha must be a positive number or null"),
        (["numeric.targets=[attn.to_qq]"], "numeric.targets: cannot target 'attn.to_qq'; allowed: attn.to_k"),
        (["numeric.targets=attn.to_q"], "numeric.targets must be a list"),
        (["numeric.encoder_width=0"], "numeric.encoder_width must be an integer >= 1, got 0"),
        (["numeric.frequencies=-1"], "numeric.frequencies must be an integer >= 0"),
        (["numeric.init=zeros"], "numeric.init must be gaussian or default"),
        ([f"numeric.registry={tmp_path / 'none.json'}"], "numeric.registry: no such file"),
        ([f"numeric.registry={tmp_path / 'bad.json'}"], "numeric.registry: the registry is not valid JSON"),
        (["numeric.replay_fraction=1"], r"numeric.replay_fraction must be a number in \[0, 1\), got 1"),
        (["numeric.replay_fraction=0.2"], "needs numeric.replay_edits: the edits folders"),
    ]
    for overrides, message in bad:
        with pytest.raises(ConfigError, match=message) as e:
            load_config(None, ["method=numeric", *overrides])
        assert "\n" not in str(e.value)


# ---------------------------------------------------------------- whole runs: resume, 2 ranks, validation, export

@pytest.mark.slow  # processes killed / launched: tens of seconds each
def test_sigkill_mid_step_then_resume_equals_an_uninterrupted_run(cat_data, tmp_path):
    import json
    from test_trainer import killed_then_resumed, write_config
    a, b = killed_then_resumed(write_config(tmp_path / "straight.yaml", numeric_config(cat_data, tmp_path / "straight")),
                               write_config(tmp_path / "killed.yaml", numeric_config(cat_data, tmp_path / "killed")),
                               3, 2)
    assert any(k.startswith("adapter.task_embedding") for k in a) and any("lora_B" in k for k in a)
    assert all(a[k].abs().max() > 0 for k in a if "lora_B" in k)  # every B learnt from zero
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # validation: frame 0 edited to each of the 4 frames, beside the truth; PSNR per render
    folder = tmp_path / "straight" / "validation" / "step-00000004"
    from PIL import Image
    with Image.open(folder / "numeric.png") as im:
        assert im.size == (16 * 5, 16 * 2)
    metrics = json.loads((folder / "metrics.json").read_text())
    (trajectory, m), = metrics.items()
    assert trajectory == "exposure/astronaut" and len(m["psnr_db"]) == 4
    assert m["instructions"][0] == "Increase the exposure by 0 EV"


@pytest.mark.slow  # processes killed / launched: tens of seconds each
def test_two_process_run_keeps_identical_weights_and_equals_one_process(cat_data, tmp_path):
    from safetensors.torch import load_file
    from test_trainer import cli, launch_two_processes, write_config
    from kontext_sliders.trainer.engine.checkpoint import latest_checkpoint
    launch_two_processes(write_config(tmp_path / "ddp.yaml", numeric_config(cat_data, tmp_path / "ddp", batch_size=1,
                                                                            max_steps=2)))
    single = write_config(tmp_path / "single.yaml", numeric_config(cat_data, tmp_path / "single", batch_size=2,
                                                                   max_steps=2))
    assert cli("train", "--config", str(single)).returncode == 0
    a = load_file(latest_checkpoint(tmp_path / "ddp") / "trainable.safetensors")
    b = load_file(latest_checkpoint(tmp_path / "single") / "trainable.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)


@pytest.fixture(scope="module")
def exported(cat_data, tmp_path_factory):
    """A 2-step run exported with the CLI: (run folder, file, the checkpoint's trainable tensors, CLI output)."""
    from safetensors.torch import load_file
    from kontext_sliders.trainer.engine.checkpoint import latest_checkpoint
    from kontext_sliders.trainer.cli import main
    from kontext_sliders.trainer.engine.config import config_from_dict
    from kontext_sliders.trainer.engine.loop import train
    tmp = tmp_path_factory.mktemp("export")
    result = train(config_from_dict(numeric_config(cat_data, tmp / "run", max_steps=2)))
    assert result.steps == 2 and result.skipped == {}
    trainable = load_file(latest_checkpoint(tmp / "run") / "trainable.safetensors")
    import contextlib
    import io
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["export", str(tmp / "run"), "--out", str(tmp / "numeric.safetensors")]) == 0
    return tmp / "run", tmp / "numeric.safetensors", trainable, out.getvalue()


def test_export_round_trip_loads_back_equal_and_drives_the_same_model(exported):
    from diffusers import FluxTransformer2DModel
    from kontext_sliders.core.numeric import load_numeric_weights, read_numeric_header
    from kontext_sliders.trainer.engine.config import load_config
    from kontext_sliders.trainer.engine.features import FeatureCache
    from kontext_sliders.trainer.methods.numeric.method import NumericMethod
    run, path, trainable, printed = exported
    assert "exported NumeriKontrol adapter (9 tasks: exposure, contrast" in printed
    assert "LoRA rank 4 (scale 1) on 15 modules" in printed
    weights = load_numeric_weights(path)
    assert weights.registry == DEFAULT_REGISTRY and weights.adapter_config == ADAPTER
    assert (weights.lora_rank, weights.lora_alpha) == (4, 4.0)
    header = read_numeric_header(path)
    assert (header.lora_rank, header.lora_alpha) == (4, 4.0)
    assert weights.adapter_state.keys() == {k[len("adapter."):] for k in trainable if k.startswith("adapter.")}
    for k, v in weights.adapter_state.items():
        assert torch.equal(v, trainable["adapter." + k]), k
    assert len(weights.lora_state) == len(trainable) - len(weights.adapter_state) == 2 * 15
    for k, v in weights.lora_state.items():  # transformer.<module>.lora_A.weight <- ....lora_A.default.weight
        assert torch.equal(v, trainable[k.replace(".weight", ".default.weight")]), k
    # a fresh base + the file = the trained model (same scratch base: seed 0, as the run)
    method = NumericMethod(load_config(run / "config.yaml"))
    method.prepare(FeatureCache(run / "cache"), torch.device("cpu"), progress=False)
    torch.manual_seed(0)
    trained = method.build_model()
    trained.load_state_dict(trainable, strict=False)
    torch.manual_seed(0)
    again = NumericModel.from_weights(FluxTransformer2DModel(**TINY), weights)
    x = inputs(batch=2)
    x["context"] = torch.randn(2, 7, 32)
    edits = [[(EXPOSURE, 1.5)], [(HUE, 30.0), (BLUR, -1.0)]]
    with torch.no_grad():
        assert torch.equal(trained.eval()(**x, edits=edits), again(**x, edits=edits))


def test_weight_file_errors_are_one_clear_line(exported, tmp_path):
    from safetensors.torch import load_file, save_file
    from kontext_sliders.core.weights_io import WeightsFormatError
    from kontext_sliders.core.numeric import load_numeric_weights, numeric_metadata
    from kontext_sliders.core.numeric.weights import ADAPTER_PREFIX
    _, path, _, _ = exported
    tensors = load_file(path)
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    small = AdapterConfig(encoder_width=8, embed_width=16, decoder_width=16, out_dim=32)

    def write(name, t=tensors, m=meta):
        save_file(t, str(tmp_path / name), metadata=m)
        return tmp_path / name

    lora_key = next(k for k in tensors if k.endswith("lora_A.weight"))
    nan = dict(tensors)
    nan[ADAPTER_PREFIX + "task_embedding.weight"] = torch.full_like(nan[ADAPTER_PREFIX + "task_embedding.weight"],
                                                                    float("nan"))
    (tmp_path / "cut.safetensors").write_bytes(path.read_bytes()[:200])
    cases = [
        (tmp_path / "cut.safetensors", "is not a readable safetensors file"),
        (write("sizes.safetensors", m=numeric_metadata(DEFAULT_REGISTRY, small, 4, 4.0)),
         "the adapter's tensors do not match its header's sizes"),
        (write("noadapter.safetensors", {k: v for k, v in tensors.items() if not k.startswith(ADAPTER_PREFIX)}),
         "holds no numeric adapter tensors"),
        (write("rank.safetensors", m=numeric_metadata(DEFAULT_REGISTRY, ADAPTER, 8, 8.0)),
         "the header says LoRA rank 8, the tensors have rank 4"),
        (write("half.safetensors", {k: v for k, v in tensors.items() if k != lora_key}), "lacks its lora_A tensor"),
        (write("nan.safetensors", nan), "NaN or infinite"),
        (write("other.safetensors", m={"format": "pt", "kontext_sliders": '{"format": "kontinuous-kontext"}'}),
         "is a 'kontinuous-kontext' file, not a NumeriKontrol weight file"),
    ]
    for bad, message in cases:
        with pytest.raises(WeightsFormatError, match=message) as e:
            load_numeric_weights(bad)
        assert "\n" not in str(e.value) and bad.name in str(e.value)


def test_train_on_the_pretrained_folder_vae_and_t5_path(cat_data, tmp_path):
    """FLUX's VAE latents, T5 + CLIP features of the rendered instructions, a frozen pretrained base, gradient
    checkpointing (the numeric tokens go through the recompute too)."""
    pytest.importorskip("transformers")
    from safetensors.torch import load_file
    from test_trainer_flux_pipeline import build_tiny_kontext
    from kontext_sliders.trainer.engine.checkpoint import latest_checkpoint
    from kontext_sliders.trainer.engine.config import config_from_dict
    from kontext_sliders.trainer.engine.loop import train
    kontext = build_tiny_kontext(tmp_path / "kontext")
    raw = numeric_config(cat_data, tmp_path / "run", max_steps=2)
    raw["model"] = {"pretrained": str(kontext), "gradient_checkpointing": True}
    raw["data"].update(text_encoder="flux", pixel_space=False)
    result = train(config_from_dict(raw))
    assert result.steps == 2 and result.skipped == {} and result.last_loss > 0
    trained = load_file(latest_checkpoint(tmp_path / "run") / "trainable.safetensors")
    lora = [k for k in trained if "lora_" in k]
    assert len(lora) == 2 * (6 + 3)  # 1 double block (Q/K/V of both streams) + 1 single block (joint Q/K/V)
    assert all(trained[k].abs().max() > 0 for k in lora if "lora_B" in k)
    assert (tmp_path / "run" / "validation" / "step-00000002" / "numeric.png").is_file()


def test_a_full_fine_tune_of_a_pretrained_base_trains_and_exports_the_transformer(cat_data, exported, tmp_path):
    """model.train_transformer on a pretrained folder: every transformer weight and the adapter train, no LoRA;
    export writes the trained transformer beside the numeric file, refuses to drop it, and refuses a transformer
    folder for a LoRA-only run. The base folder itself is never written."""
    import contextlib
    import io
    from diffusers import FluxTransformer2DModel
    from safetensors.torch import load_file
    from kontext_sliders.core.numeric import load_numeric_weights
    from kontext_sliders.trainer.engine.checkpoint import latest_checkpoint
    from kontext_sliders.trainer.cli import main
    from kontext_sliders.trainer.engine.config import config_from_dict
    from kontext_sliders.trainer.engine.loop import train
    torch.manual_seed(3)
    FluxTransformer2DModel(**TINY).save_pretrained(tmp_path / "base" / "transformer")
    before = load_file(tmp_path / "base" / "transformer" / "diffusion_pytorch_model.safetensors")
    raw = numeric_config(cat_data, tmp_path / "run", max_steps=2)
    raw["model"] = {"pretrained": str(tmp_path / "base"), "gradient_checkpointing": False, "train_transformer": True}
    train(config_from_dict(raw))
    trainable = load_file(latest_checkpoint(tmp_path / "run") / "trainable.safetensors")
    base_names = {f"transformer.{k}" for k in before}
    assert base_names <= set(trainable) and not any("lora_" in k for k in trainable)
    assert any(k.startswith("adapter.") for k in trainable)
    changed = [k for k in before if not torch.equal(before[k], trainable[f"transformer.{k}"])]
    assert changed  # the base's own weights trained ...
    after = load_file(tmp_path / "base" / "transformer" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)  # ... in the run, not in the base folder

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "n.safetensors")]) == 2
    assert "--transformer-out" in err.getvalue() and not (tmp_path / "n.safetensors").exists()
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "n.safetensors"),
                     "--transformer-out", str(tmp_path / "tuned")]) == 0
    weights = load_numeric_weights(tmp_path / "n.safetensors")
    assert weights.lora_state == {} and weights.adapter_state
    tuned = FluxTransformer2DModel.from_pretrained(str(tmp_path / "tuned"), subfolder="transformer").state_dict()
    assert set(tuned) == set(before)
    assert all(torch.equal(tuned[k], trainable[f"transformer.{k}"]) for k in tuned)

    err = io.StringIO()
    with contextlib.redirect_stderr(err):  # a LoRA-only run has no transformer to write
        assert main(["export", str(exported[0]), "--out", str(tmp_path / "m.safetensors"),
                     "--transformer-out", str(tmp_path / "none")]) == 2
    assert "drop --transformer-out" in err.getvalue() and not (tmp_path / "none").exists()


def test_train_transformer_config_errors(tmp_path):
    from kontext_sliders.trainer.engine.config import ConfigError, config_from_dict
    from kontext_sliders.trainer.families.flux1 import build_transformer
    (tmp_path / "base" / "transformer").mkdir(parents=True)
    with pytest.raises(ConfigError, match="SliderEdit run keeps its base frozen"):
        config_from_dict({"method": "slideredit", "model": {"pretrained": str(tmp_path), "train_transformer": True}})
    with pytest.raises(ConfigError, match="set lora.enabled: false"):
        config_from_dict({"model": {"pretrained": str(tmp_path), "train_transformer": True}})
    # a full Kontinuous fine-tune: every weight of the pretrained base trains, no LoRA
    from diffusers import FluxTransformer2DModel
    FluxTransformer2DModel(**TINY).save_pretrained(tmp_path / "base" / "transformer")
    config = config_from_dict({"model": {"pretrained": str(tmp_path / "base"), "train_transformer": True},
                               "lora": {"enabled": False}})
    transformer = build_transformer(config)
    assert all(p.requires_grad for p in transformer.parameters())
    assert not any("lora_" in n for n, _ in transformer.named_parameters())
    frozen = build_transformer(config_from_dict({"model": {"pretrained": str(tmp_path / "base")},
                                                 "lora": {"enabled": False}}))
    assert not any(p.requires_grad for p in frozen.parameters())
