"""The trainer at a tiny size on the CPU: config, loss, determinism, SIGKILL + resume, 2 ranks, bad samples."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

pytest.importorskip("diffusers")
pytest.importorskip("accelerate")

from kontext_sliders.trainer.engine.checkpoint import latest_checkpoint, list_checkpoints, save_checkpoint  # noqa: E402
from kontext_sliders.trainer.engine.config import ConfigError, load_config  # noqa: E402
from kontext_sliders.trainer.data.trajectories import Frame, Trajectory, write_manifest  # noqa: E402

TINY = {"patch_size": 1, "in_channels": 12, "num_layers": 1, "num_single_layers": 1, "attention_head_dim": 16,
        "num_attention_heads": 2, "joint_attention_dim": 32, "pooled_projection_dim": 32, "guidance_embeds": False,
        "axes_dims_rope": [4, 6, 6]}


def brightness_trajectories(root: Path, n: int = 3, frames: int = 5, size: int = 16) -> Path:
    """Tiny ground-truth trajectories: frame k = source x (1 + k / (frames - 1))."""
    rng = np.random.default_rng(0)
    trajs = []
    for i in range(n):
        src = rng.uniform(0.2, 0.5, (size, size, 3))
        Image.fromarray((src * 255).astype(np.uint8)).save(root / f"s{i}.png")
        fr = []
        for k in range(frames):
            Image.fromarray((np.clip(src * (1 + k / (frames - 1)), 0, 1) * 255).astype(np.uint8)).save(
                root / f"s{i}_{k}.png")
            fr.append(Frame(f"s{i}_{k}.png", k / (frames - 1), k / (frames - 1)))
        trajs.append(Trajectory(f"t{i}", f"s{i}.png", "make it brighter" if i % 2 else "brighter please", tuple(fr)))
    write_manifest(root, trajs)
    return root


def tiny_config(data: Path, out: Path, **run) -> dict:
    return {
        "model": {"scratch": TINY, "gradient_checkpointing": False},
        "lora": {"enabled": False},
        "projector": {"strength_embed_dim": 32},
        "data": {"trajectories": [str(data)], "pixel_space": True, "text_encoder": "learned", "resolution": 16},
        "optim": {"lr": 1e-3},
        "run": {"output_dir": str(out), "max_steps": 6, "batch_size": 2, "checkpoint_every": 3,
                "mixed_precision": "no", "progress": False, "sample_steps": 2, "validation_pairs": 1, **run},
    }


@pytest.fixture()
def data(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    return brightness_trajectories(d)


def prepared_method(raw: dict, cache: Path):
    """(the method of a raw config with its data prepared into the feature cache ``cache``, its model at seed 0)."""
    from kontext_sliders.trainer.engine.config import config_from_dict
    from kontext_sliders.trainer.engine.features import FeatureCache
    from kontext_sliders.trainer.engine.loop import make_method
    method = make_method(config_from_dict(raw))
    method.prepare(FeatureCache(cache), torch.device("cpu"), progress=False)
    torch.manual_seed(0)
    return method, method.build_model()


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def cli(*args, env_extra=None):
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "kontext_sliders.trainer", *args], capture_output=True, text=True,
                          env=env, timeout=600)


# ---------------------------------------------------------------- config

def test_yaml_toml_and_overrides_resolve_to_the_same_config(tmp_path):
    (tmp_path / "a.yaml").write_text("optim:\n  lr: 1e-4\nrun:\n  max_steps: 7\n  mixed_precision: no\n")
    (tmp_path / "a.toml").write_text('[optim]\nlr = 1e-4\n[run]\nmax_steps = 7\nmixed_precision = "no"\n')
    a, b = load_config(tmp_path / "a.yaml"), load_config(tmp_path / "a.toml")
    assert a == b and a.optim.lr == 1e-4 and a.run.mixed_precision == "no"
    c = load_config(tmp_path / "a.yaml", ["run.max_steps=9", "lora.rank=8", "optim.betas=[0.8, 0.9]"])
    assert (c.run.max_steps, c.lora.rank, c.optim.betas) == (9, 8, (0.8, 0.9))
    defaults = load_config()
    assert (defaults.lora.rank, defaults.lora.alpha, defaults.optim.lr, defaults.projector.slider_dropout) == (
        4, 4.0, 2e-5, 0.1)  # the official release's values (dropout: the paper's)


def test_bad_config_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="unknown setting.*run.max_step\\b"):
        load_config(None, ["run.max_step=3"])
    with pytest.raises(ConfigError, match="optim.lr: 'fast' is not a valid float"):
        load_config(None, ["optim.lr=fast"])
    with pytest.raises(ConfigError, match="must look like section.key=value"):
        load_config(None, ["max_steps=3"])
    with pytest.raises(ConfigError, match="method 'numerikontrol' is not one this trainer implements; "
                                          "available: kontinuous, slideredit"):
        load_config(None, ["method=numerikontrol"])
    assert load_config(None, ["method=kontinuous"]).method == "kontinuous" == load_config().method
    (tmp_path / "x.yaml").write_text("run: [oops\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "x.yaml")


def test_8bit_adam_uses_bitsandbytes_or_says_how_to_get_it(monkeypatch):
    import types
    from kontext_sliders.trainer.engine.loop import make_optimizer
    config = load_config(None, ["optim.use_8bit_adam=true", "optim.lr=3e-4", "optim.betas=[0.8, 0.95]"])
    params = [torch.nn.Parameter(torch.zeros(3))]
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # not installed
    with pytest.raises(RuntimeError, match="pip install bitsandbytes"):
        make_optimizer(config, params)
    made = {}

    class AdamW8bit(torch.optim.AdamW):
        def __init__(self, params, **kwargs):
            made.update(kwargs)
            super().__init__(params, **kwargs)

    fake = types.SimpleNamespace(optim=types.SimpleNamespace(AdamW8bit=AdamW8bit))
    monkeypatch.setitem(sys.modules, "bitsandbytes", fake)
    optimizer, _ = make_optimizer(config, params)
    assert isinstance(optimizer, AdamW8bit) and made["lr"] == 3e-4 and made["betas"] == (0.8, 0.95)


# ---------------------------------------------------------------- learning

def test_a_few_steps_reduce_the_loss_on_a_fixed_batch(data, tmp_path):
    from kontext_sliders.trainer.engine.features import FeatureCache, PixelCodec, cache_trajectories
    from kontext_sliders.trainer.methods.kontinuous.method import Batches, flow_matching_loss, rows_for_step
    from kontext_sliders.trainer.engine.loop import make_optimizer
    from kontext_sliders.trainer.methods.kontinuous.model import build_model
    config = load_config(write_config(tmp_path / "c.yaml", tiny_config(data, tmp_path / "out")))
    cache = FeatureCache(tmp_path / "cache")
    dataset = cache_trajectories([str(data)], cache, PixelCodec(16))
    torch.manual_seed(0)
    model = build_model(config, dataset.instructions)
    optimizer, _ = make_optimizer(config, [p for p in model.parameters() if p.requires_grad])
    batch = Batches(dataset, cache, learned_text=True).load(rows_for_step(0, 0, 4, dataset, 0.0), torch.device("cpu"))
    losses = []
    for _ in range(25):
        loss = flow_matching_loss(model, batch)
        losses.append(float(loss.detach()))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert losses[-1] < 0.5 * losses[0], losses


def test_lines_text_gives_a_kontinuous_run_the_fixed_text_an_offline_editor_reads(data, tmp_path):
    """``data.text_encoder: lines``: no trainable text embedding; each instruction's cached features are the
    per-line encoder's (what ``method: editor`` / ``numeric`` runs read for the same line), and they reach the
    transformer."""
    from kontext_sliders.trainer.engine.config import config_from_dict
    from kontext_sliders.trainer.methods.kontinuous.method import flow_matching_loss
    from kontext_sliders.trainer.engine.codecs import text_encoder_for
    raw = tiny_config(data, tmp_path / "out")
    raw["data"]["text_encoder"] = "lines"
    method, model = prepared_method(raw, tmp_path / "cache")
    assert model.text_encoder is None
    assert not [n for n, p in model.named_parameters() if n.startswith("text_encoder")]
    lines = text_encoder_for(config_from_dict(raw), torch.device("cpu"))
    rows = method.rows(0, 0, 4)
    batch = method.load(rows, torch.device("cpu"))
    for i, instruction in enumerate(batch["instructions"]):
        expected = lines.encode_lines([instruction])
        assert torch.equal(batch["context"][i], expected["context"])
        assert torch.equal(batch["pooled"][i], expected["pooled"])
    assert {"make it brighter", "brighter please"} == set(method.dataset.instructions)
    # the text reaches the velocity: each row given the other instruction's vectors, another loss
    swapped = [lines.encode_lines(["make it brighter" if i == "brighter please" else "brighter please"])
               for i in batch["instructions"]]
    other = dict(batch, context=torch.stack([x["context"] for x in swapped]),
                 pooled=torch.stack([x["pooled"] for x in swapped]))
    assert not torch.equal(flow_matching_loss(model, batch), flow_matching_loss(model, other))
    with pytest.raises(ConfigError, match="data.text_encoder must be one of flux, learned, lines, got 'bert'"):
        from kontext_sliders.trainer.engine.config import check_ready_to_train
        check_ready_to_train(config_from_dict(dict(raw, data=dict(raw["data"], text_encoder="bert"))))


def test_the_step_rows_are_a_pure_function_of_seed_and_step(data, tmp_path):
    from kontext_sliders.trainer.engine.features import FeatureCache, PixelCodec, cache_trajectories
    from kontext_sliders.trainer.methods.kontinuous.method import rows_for_step
    dataset = cache_trajectories([str(data)], FeatureCache(tmp_path / "cache"), PixelCodec(16))
    assert rows_for_step(3, 5, 4, dataset, 0.1) == rows_for_step(3, 5, 4, dataset, 0.1)
    assert rows_for_step(3, 5, 4, dataset, 0.1) != rows_for_step(3, 6, 4, dataset, 0.1)
    many = [r for s in range(200) for r in rows_for_step(0, s, 4, dataset, 0.1)]
    dropped = sum(not r.keep for r in many) / len(many)
    assert 0.06 < dropped < 0.14  # slider-condition dropout at its configured rate
    assert {r.frame for r in many} == set(range(5)) and {r.trajectory for r in many} == {0, 1, 2}


# ---------------------------------------------------------------- fault tolerance

def killed_then_resumed(straight: Path, killed: Path, kill_at: int, saved: int) -> tuple[dict, dict]:
    """Run ``straight`` through; run ``killed`` with SIGKILL in the middle of step ``kill_at`` (the last checkpoint
    at ``saved``), then ``--resume latest``. Returns both runs' last trainable tensors."""
    from safetensors.torch import load_file
    config = yaml.safe_load(straight.read_text())
    r = cli("train", "--config", str(straight))
    assert r.returncode == 0, r.stderr[-2000:]
    r = cli("train", "--config", str(killed), "--set", f"run.kill_at_step={kill_at}")
    assert r.returncode == -9, (r.returncode, r.stderr[-2000:])  # SIGKILL, in the middle of the step
    out = Path(yaml.safe_load(killed.read_text())["run"]["output_dir"])
    assert [s for s, _ in list_checkpoints(out)] == [saved]  # nothing after the last checkpoint was kept
    r = cli("train", "--config", str(killed), "--resume", "latest")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resumed from" in r.stderr and f"at step {saved}" in r.stderr
    a = load_file(latest_checkpoint(config["run"]["output_dir"]) / "trainable.safetensors")
    b = load_file(latest_checkpoint(out) / "trainable.safetensors")
    assert a.keys() == b.keys()
    return a, b


@pytest.mark.slow  # processes killed / launched: tens of seconds each
def test_sigkill_mid_step_then_resume_equals_an_uninterrupted_run(data, tmp_path):
    a, b = killed_then_resumed(write_config(tmp_path / "straight.yaml", tiny_config(data, tmp_path / "straight")),
                               write_config(tmp_path / "killed.yaml", tiny_config(data, tmp_path / "killed")), 5, 3)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_checkpoints_are_atomic_and_pruned(tmp_path):
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, step, {"w": torch.full((2,), float(step))}, {"step": step}, "x: 1\n", keep=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [3, 4]
    # a run killed while writing leaves a hidden temp folder: never taken for a checkpoint, removed on next save
    stray = tmp_path / "checkpoints" / ".tmp-checkpoint-00000005-abc"
    stray.mkdir()
    (stray / "trainable.safetensors").write_bytes(b"half")
    assert latest_checkpoint(tmp_path).name == "checkpoint-00000004"
    save_checkpoint(tmp_path, 6, {"w": torch.zeros(2)}, {"step": 6}, "x: 1\n", keep=2)
    assert not stray.exists() and [s for s, _ in list_checkpoints(tmp_path)] == [4, 6]


def test_bad_samples_are_skipped_and_counted(data, tmp_path):
    from kontext_sliders.trainer.engine.config import config_from_dict
    from kontext_sliders.trainer.engine.loop import train
    (data / "s0_2.png").write_bytes(b"not a png")  # unreadable frame
    (data / "s1.png").unlink()  # missing source: the whole trajectory goes
    result = train(config_from_dict(tiny_config(data, tmp_path / "out", max_steps=2, checkpoint_every=2)))
    assert result.skipped == {"unreadable image": 2, "trajectory without a readable source": 1}
    assert result.steps == 2 and np.isfinite(result.last_loss)


# ---------------------------------------------------------------- multi-process

def launch_two_processes(config: Path) -> None:
    """accelerate launch, 2 processes, gloo on the CPU; the trainer hashes every rank's weights at the end."""
    launcher = Path(sys.executable).parent / "accelerate"
    r = subprocess.run([str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                        "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "kontext_sliders.trainer",
                        "train", "--config", str(config)], capture_output=True, text=True, timeout=240,
                       env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "trainable weights identical on 2 ranks" in r.stderr


@pytest.mark.slow  # processes killed / launched: tens of seconds each
def test_two_process_run_keeps_identical_weights_on_both_ranks(data, tmp_path):
    from safetensors.torch import load_file
    launch_two_processes(write_config(tmp_path / "ddp.yaml", tiny_config(data, tmp_path / "ddp", batch_size=1)))
    # 2 ranks x batch 1 see the same global rows as 1 process x batch 2: the same weights, to float tolerance
    single = write_config(tmp_path / "single.yaml", tiny_config(data, tmp_path / "single", batch_size=2))
    assert cli("train", "--config", str(single)).returncode == 0
    a = load_file(latest_checkpoint(tmp_path / "ddp") / "trainable.safetensors")
    b = load_file(latest_checkpoint(tmp_path / "single") / "trainable.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)
