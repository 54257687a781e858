"""`kontext-sliders demo --method numeric`: NumeriKontrol against a Kontinuous baseline on the same frame pairs."""
import itertools
import json
import math

import numpy as np
import pytest
import torch

from kontext_sliders.core.numeric import DEFAULT_REGISTRY, load_numeric_weights
from kontext_sliders.trainer.methods.numeric import demo as ND
from kontext_sliders.trainer.cli import main as cli_main
from kontext_sliders.trainer.engine.config import ConfigError, check_ready_to_train, config_from_dict
from kontext_sliders.trainer.data import cat
from kontext_sliders.trainer.data.trajectories import read_manifest
from kontext_sliders.trainer.families.flux1 import DEMO_TRANSFORMER
from kontext_sliders.trainer.engine.metrics import PSNR_CAP_DB

pytest.importorskip("diffusers")
pytest.importorskip("matplotlib")


def tiny(out, **kw):
    """From scratch unless ``base_steps`` is given (the default's base editor is 3000 steps)."""
    return ND.NumericDemoSettings(out, photo_sizes=(16, 24), crops_per_photo=2, eval_crops_per_photo=1, steps=4,
                                  batch_size=4, sample_steps=2, progress=False, **{"base_steps": 0, **kw})


def test_numeric_demo_end_to_end_tiny(tmp_path):
    settings = tiny(tmp_path / "demo", extents=(2 / 3, 1.0))
    result = ND.run_numeric_demo(settings)
    out = settings.out
    for name in ("report_numeric.md", "metrics_numeric.json", "numeric_exposure.png", "numeric_hue.png",
                 "numeric_two-edit.png", "weights/numeric_demo.safetensors",
                 "weights/numeric_transformer/transformer/config.json",
                 "weights/kontinuous/kontinuous_demo.safetensors", "weights/kontinuous/demo_editor.safetensors"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    # the NumeriKontrol file: the adapter alone (the whole transformer trained and went out as a folder)
    weights = load_numeric_weights(out / "weights" / "numeric_demo.safetensors")
    assert weights.lora_state == {} and weights.registry == DEFAULT_REGISTRY
    # the baseline's data: the numeric run's frame pairs, both directions, 0-1 strengths by |delta| / range
    numeric_trajs = read_manifest(out / "data" / "frames")
    pairs = read_manifest(out / "data" / "kontinuous")
    assert len(pairs) == len(numeric_trajs) * 2 * (ND.TRAIN_FRAMES - 1)
    tasks = {t.name: t for t in ND.demo_tasks(settings)}
    # trajectories stop at different fractions of the range; the baseline's 0-1 strength is per trajectory
    extents = {t.id: ND.trajectory_extents([t], list(tasks.values()))[0] for t in numeric_trajs}
    assert {round(e, 6) for e in extents.values()} == {round(e, 6) for e in settings.extents}
    for p in pairs:
        task, numeric_id = tasks[p.task], p.id.rsplit("/", 1)[0]
        assert p.instruction == task.instructions[0 if p.id.endswith("-up") else 1]
        assert p.frames[0].strength == 0 and (out / "data" / "kontinuous" / p.source).is_file()
        span = extents[numeric_id] * (task.range[1] - task.range[0])
        assert all(abs(f.strength - abs(f.value - p.frames[0].value) / span) < 1e-9 for f in p.frames)
    assert max(f.strength for p in pairs for f in p.frames) == pytest.approx(1)
    metrics = json.loads((out / "metrics_numeric.json").read_text())
    assert [t["task"] for t in metrics["tasks"]] == ["exposure", "hue"]
    for t in metrics["tasks"]:
        task = tasks[t["task"]]
        quarter = (task.range[1] - task.range[0]) / 4
        deltas = [r["delta"] for r in t["per_delta"]]
        assert any(d < 0 for d in deltas) and any(d > 0 for d in deltas)
        assert all(abs(d / quarter - round(d / quarter)) > 0.1 for d in deltas)  # never a trained delta
        assert t["psnr_numeric"] == pytest.approx(sum(r["psnr_numeric"] for r in t["per_delta"]) / len(deltas))
        assert t["mae_exact"] < 1e-3 * quarter  # the estimators read the exact edits back
    assert metrics["average"]["psnr_numeric"] == pytest.approx(result.average["psnr_numeric"])
    assert metrics["checks"] == result.checks() and metrics["targets_met"] == result.targets_met()
    two = metrics["two_edit"]
    # the gap is measured on the same composed truth: the better chain of single edits minus the two-line edit
    assert two["gap_db"] == pytest.approx(max(two["psnr_chain_ab"], two["psnr_chain_ba"]) - two["psnr_ab"])
    assert two["gap_to_single_gt_db"] == pytest.approx(two["single_edit_psnr"] - two["psnr_ab"])
    # the numeric tokens' order cannot matter: text ids zero, numeric tokens masked from each other
    assert two["max_abs_tokens_only"] < 1e-4
    report = (out / "report_numeric.md").read_text()
    assert f"{result.average['psnr_numeric']:.2f} dB" in report and "Kontinuous" in report
    assert metrics["train"]["numeric"]["steps"] == metrics["train"]["kontinuous"]["steps"] == settings.steps


def test_numeric_demo_on_a_base_editor_tiny(tmp_path):
    """``base_steps``: one base editor, both methods fine-tuned on it (LoRA of ``finetune_rank``), the same fixed
    text vectors for all three runs; evaluation from the exported files on the base."""
    from kontext_sliders.core.kontinuous.weights import load_kontinuous
    from kontext_sliders.trainer.engine.checkpoint import latest_checkpoint, load_checkpoint
    from kontext_sliders.trainer.engine.features import LineTextEncoder
    from kontext_sliders.trainer.methods.kontinuous.model import build_model
    from kontext_sliders.trainer.engine.codecs import text_encoder_for
    settings = tiny(tmp_path / "demo", base_steps=3, finetune="lora", finetune_rank=2)
    result = ND.run_numeric_demo(settings)
    out, weights = settings.out, settings.out / "weights"
    assert (weights / "base_editor" / "transformer" / "config.json").is_file()
    assert not (weights / "numeric_transformer").exists()  # the numeric model is the base + its file
    assert cli_main(["export", str(out / "base_run"), "--out", str(tmp_path / "editor")]) == 0  # an editor run
    assert (tmp_path / "editor" / "transformer" / "config.json").is_file()
    assert "train base editor" in result.seconds
    numeric = load_numeric_weights(weights / "numeric_demo.safetensors")
    kontinuous = load_kontinuous(weights / "kontinuous_demo.safetensors")
    assert numeric.lora_rank == kontinuous.lora_rank == 2 and numeric.lora_state and kontinuous.lora_state
    # the base's samples: every frame unchanged under the empty prompt, two frames up / down in both text forms;
    # per photo a two-line edit (both forms, both orders) on the composed truth
    edits = json.loads((out / "data" / "base" / "edits.json").read_text())["edits"]
    frames = read_manifest(out / "data" / "frames")
    per_trajectory = ND.TRAIN_FRAMES + 2 * 2 * (ND.TRAIN_FRAMES - ND.BASE_STEP)
    singles = [e for e in edits if len(e["instructions"]) < 2]
    assert len(singles) == len(frames) * per_trajectory
    from kontext_sliders.core.numeric.parser import NUMBER_RE
    tasks = ND.demo_tasks(settings)
    expected = {()} | {(line,) for t in tasks for line in t.instructions} | {
        (NUMBER_RE.sub("#", DEFAULT_REGISTRY.task(t.name).render(d)),) for t in tasks for d in (1.0, -1.0)}
    assert {tuple(e["instructions"]) for e in singles} == expected and len(expected) == 9
    assert all(e["target"] == e["image"] for e in edits if not e["instructions"])
    pairs = [e for e in edits if len(e["instructions"]) == 2]
    photos = {t.id.split("/", 1)[1] for t in frames}
    assert len(pairs) == len(photos) * 4
    exposure, hue = tasks
    from PIL import Image
    for e in pairs:
        assert ["exposure" in line for line in e["instructions"]] in ([True, False], [False, True])
        assert ["hue" in line for line in e["instructions"]] in ([True, False], [False, True])
        source, target = (torch.tensor(np.asarray(Image.open(out / "data" / "base" / e[k])), dtype=torch.float)
                          for k in ("image", "target"))
        assert (source - target).abs().mean() > 1  # both edits applied (8-bit levels)
    # one text encoder for the three runs: the base's prompt vectors are the fine-tunes'
    n_config, k_config = ND.numeric_config(settings, out, weights / "base_editor"), ND.kontinuous_config(
        settings, out, weights / "base_editor")
    encoders = [text_encoder_for(c, torch.device("cpu")) for c in (
        ND.base_config(settings, out / "data" / "base"), k_config)]
    encoders.append(text_encoder_for(n_config, torch.device("cpu"), n_config.numeric.max_edits))
    assert all(isinstance(e, LineTextEncoder) for e in encoders) and len({e.id for e in encoders}) == 1
    # the exported Kontinuous file on the base is the trained model
    trained = build_model(k_config)
    trainable, _ = load_checkpoint(latest_checkpoint(out / "run"))
    trained.load_state_dict(trainable, strict=False)
    loaded = ND.kontinuous_on_base(k_config, weights / "kontinuous_demo.safetensors")
    text = encoders[1].encode("increase the exposure")
    x, src = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    args = (x, src, torch.tensor([0.3, 0.7]), torch.tensor([0.5, 0.5]), text["context"].expand(2, -1, -1),
            text["pooled"].expand(2, -1))
    with torch.no_grad():
        assert torch.equal(trained.eval()(*args), loaded(*args))
        plain = build_model(k_config).eval()  # the base with a zero LoRA and an untrained projector
        assert not torch.allclose(plain(*args), loaded(*args))


class Oracle:
    """The exact operators at the requested values: knows the photos, the sources' values, and the values of
    every image it returned (so chained edits compose)."""
    registry = DEFAULT_REGISTRY

    def __init__(self, photos, tasks, seed=0):
        self.photos, self.tasks, self.seed = photos, {t.name: t for t in tasks}, seed
        self.outputs = []  # (image, its values)

    def _render(self, values):
        out = self.photos
        for name, task in self.tasks.items():  # A then B, as the truth
            out = task.apply(out, values[name], self.seed)
        return out

    def _values(self, sources):
        """The values of an image it returned, else of the source it is: each task at the middle or untouched."""
        for image, values in self.outputs:
            if image is sources:
                return dict(values)
        middle = {name: task.value_at(ND.SOURCE_STRENGTH) for name, task in self.tasks.items()}
        for state in itertools.product(*[(task.identity, middle[name]) for name, task in self.tasks.items()]):
            values = dict(zip(self.tasks, state))
            if torch.equal(self._render(values), sources):
                return values
        raise AssertionError("a source the oracle does not know")

    def __call__(self, sources, edits, lines=None):
        values = self._values(sources)
        for name, delta in edits:
            values[name] += delta
        out = self._render(values)
        self.outputs.append((out, values))
        return out

    def kontinuous(self, sources, task, delta):
        return self(sources, [(task.name, delta)])


def test_numeric_demo_whole_fine_tunes_on_a_base_editor_tiny(tmp_path):
    """``finetune="whole"``: both fine-tunes train every weight of the base (no LoRA) at ``finetune_lr``; each
    exports its own transformer, the evaluated models are those files, and the base folder is not written."""
    from kontext_sliders.core.kontinuous.weights import load_kontinuous
    from kontext_sliders.trainer.engine.checkpoint import latest_checkpoint, load_checkpoint
    from kontext_sliders.trainer.methods.kontinuous.model import build_model
    from safetensors.torch import load_file
    settings = tiny(tmp_path / "demo", base_steps=3, finetune="whole", finetune_lr=3e-4, finetune_transformer_lr=1e-4,
                    lines_pooled="sum")
    n_config = ND.numeric_config(settings, tmp_path, tmp_path / "base")
    k_config = ND.kontinuous_config(settings, tmp_path, tmp_path / "base")
    for c in (n_config, k_config):
        assert c.model.train_transformer and c.optim.lr == 3e-4 and not c.lora.enabled
        assert c.optim.transformer_lr == 1e-4
    for c in (n_config, k_config, ND.base_config(settings, tmp_path)):
        assert c.data.text_encoder == "lines" and c.data.lines_pooled == "sum"
    result = ND.run_numeric_demo(settings)
    weights = settings.out / "weights"
    assert load_numeric_weights(weights / "numeric_demo.safetensors").lora_state == {}
    assert load_kontinuous(weights / "kontinuous_demo.safetensors").lora_state == {}
    base = load_file(weights / "base_editor" / "transformer" / "diffusion_pytorch_model.safetensors")
    tuned = {name: load_file(weights / name / "transformer" / "diffusion_pytorch_model.safetensors")
             for name in ("numeric_transformer", "kontinuous_transformer")}
    for name, state in tuned.items():
        assert set(state) == set(base) and any(not torch.equal(state[k], base[k]) for k in base), name
    # the evaluated Kontinuous model is the run's: its fine-tuned transformer and projector
    k_config = ND.kontinuous_config(settings, settings.out, weights / "base_editor")
    loaded = ND.kontinuous_on_base(k_config, weights / "kontinuous_demo.safetensors",
                                   weights / "kontinuous_transformer")
    trained = build_model(k_config)
    trainable, _ = load_checkpoint(latest_checkpoint(settings.out / "run"))
    trained.load_state_dict(trainable, strict=False)
    ours, theirs = loaded.state_dict(), trained.state_dict()
    assert set(ours) == set(theirs) and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert math.isfinite(result.average["psnr_numeric"]) and math.isfinite(result.average["psnr_kontinuous"])
    report = (settings.out / "report_numeric.md").read_text()
    assert "every weight of the base (the base's weights at lr 0.0001)" in report and "lr 0.0003" in report
    assert "pooled text vector the sum of its lines'" in report


def test_finetune_replay_trains_the_slider_beside_the_bases_two_line_edits(tmp_path):
    """``finetune_replay``: the NumeriKontrol fine-tune draws that fraction of its rows from the base editor's
    two-line edits in the numeric text form (and nothing else of the base's data); the Kontinuous fine-tune none."""
    from kontext_sliders.trainer.data.edits import read_edits
    from kontext_sliders.trainer.engine.config import config_from_dict
    from kontext_sliders.trainer.engine.features import FeatureCache
    from kontext_sliders.trainer.methods.numeric.method import NumericMethod
    settings = tiny(tmp_path / "demo", base_steps=3, finetune="whole", finetune_replay=0.5)
    result = ND.run_numeric_demo(settings)
    assert math.isfinite(result.average["psnr_numeric"])
    replay = read_edits(settings.out / "data" / "base_two_line")
    base = read_edits(settings.out / "data" / "base")
    assert replay and all(len(s.instructions) == 2 and all("#" in line for line in s.instructions) for s in replay)
    assert len(replay) == sum(len(s.instructions) == 2 for s in base) // 2  # one text form of the two
    weights = settings.out / "weights" / "base_editor"
    n_config = ND.numeric_config(settings, settings.out / "data" / "frames", weights)
    k_config = ND.kontinuous_config(settings, settings.out / "data" / "kontinuous", weights)
    assert n_config.numeric.replay_fraction == 0.5 and k_config.numeric.replay_fraction == 0
    method = NumericMethod(config_from_dict(n_config.to_dict()))
    method.prepare(FeatureCache(settings.out / "cache_numeric"), torch.device("cpu"), progress=False)
    rows = [r for step in range(4) for r in method.rows(settings.seed, step, 16)]
    assert 0 < sum(r.replay is not None for r in rows) < len(rows)
    batch = method.load(rows[:16], torch.device("cpu"))
    assert {len(e) for e in batch["edits"]} == {0, 1}
    assert torch.isfinite(method.loss(method.build_model(), batch))
    assert "replays the base's two-line edits (no numeric tokens) in 50 % of its rows" in \
        (settings.out / "report_numeric.md").read_text()


def test_lines_pooled_sum_keeps_each_lines_pooled_vector_whole():
    """``data.lines_pooled: sum``: a prompt of several lines gets the sum of its lines' pooled vectors (the mean
    by default); the token vectors, and everything of a one-line prompt, are the same either way."""
    from kontext_sliders.trainer.engine.features import LineTextEncoder
    from kontext_sliders.trainer.engine.codecs import text_encoder_for
    mean, total = LineTextEncoder(2, 3, 32, 16), LineTextEncoder(2, 3, 32, 16, "sum")
    lines = ["increase the exposure by # EV", "rotate the hue by # degrees"]
    one = [e.encode_lines(lines[1:]) for e in (mean, total)]
    assert all(torch.equal(one[0][k], one[1][k]) for k in one[0])
    a, b = (mean.encode_lines([line])["pooled"] for line in lines)
    two_mean, two_sum = mean.encode_lines(lines), total.encode_lines(lines)
    assert torch.equal(two_mean["context"], two_sum["context"])
    assert torch.allclose(two_sum["pooled"], a + b) and torch.allclose(two_mean["pooled"], (a + b) / 2)
    assert not torch.allclose(two_sum["pooled"], two_mean["pooled"])
    assert torch.equal(total.encode_lines([])["pooled"], torch.zeros(16))
    assert mean.id != total.id  # cached prompt features never mix the two
    with pytest.raises(ValueError, match="pooled must be 'mean' or 'sum', got 'max'"):
        LineTextEncoder(2, 3, 32, 16, "max")
    config = {"model": {"scratch": DEMO_TRANSFORMER}, "data": {"text_encoder": "lines"}}
    assert text_encoder_for(config_from_dict(config), torch.device("cpu")).pooled == "mean"
    config["data"]["lines_pooled"] = "sum"
    assert text_encoder_for(config_from_dict(config), torch.device("cpu")).pooled == "sum"
    config["data"]["lines_pooled"] = "max"
    with pytest.raises(ConfigError, match="data.lines_pooled must be one of mean, sum, got 'max'"):
        check_ready_to_train(config_from_dict(config))


def test_exact_edits_score_perfectly():
    tasks = [cat.get_task("exposure"), cat.get_task("hue")]
    photos = torch.stack([p.image for p in cat.skimage_photos(["chelsea", "coffee"], 16)])
    oracle = Oracle(photos, tasks)
    for task in tasks:
        summary, frames = ND.evaluate_single(task, photos, oracle, oracle.kontinuous, 0)
        assert summary["psnr_numeric"] == summary["psnr_kontinuous"] == pytest.approx(PSNR_CAP_DB)
        assert summary["mae_numeric"] == summary["mae_exact"] < 1e-3
        assert summary["psnr_no_edit"] < 40 and len(frames) == len(ND.TARGET_STRENGTHS)
    two, _ = ND.evaluate_two_edit(tasks[0], tasks[1], photos, oracle, 0, PSNR_CAP_DB)
    assert two["psnr_ab"] == two["psnr_ba"] == pytest.approx(PSNR_CAP_DB) and two["gap_db"] == pytest.approx(0)
    assert two["psnr_chain_ab"] == two["psnr_chain_ba"] == pytest.approx(PSNR_CAP_DB)
    assert two["swap_db"] == 0 and not math.isnan(two["psnr_no_edit"])

    class FirstLineOnly(Oracle):  # exact single edits, but a two-line request edits only its first line
        def __call__(self, sources, edits, lines=None):
            return super().__call__(sources, edits[:1])

    two, _ = ND.evaluate_two_edit(tasks[0], tasks[1], photos, FirstLineOnly(photos, tasks), 0, PSNR_CAP_DB)
    assert two["psnr_chain_ab"] == two["psnr_chain_ba"] == pytest.approx(PSNR_CAP_DB)
    assert two["gap_db"] > 10 and two["swap_db"] > 0


def test_base_composed_draws_more_two_line_edits_and_keeps_the_first(tmp_path):
    """``base_composed``: that many two-line edits per photo, the first the one-draw data's, ids unique."""
    tasks = [cat.get_task("exposure"), cat.get_task("hue")]
    photos = cat.skimage_photos(["astronaut", "retina", "rocket"], 16)
    frames = tmp_path / "frames"
    trajectories = cat.synthesize(frames, photos, tasks, ND.TRAIN_FRAMES, 0, False, (1.0,))
    pairs = {}
    for n in (1, 3):
        ND.base_edits(tmp_path / f"base{n}", frames, trajectories, tasks, photos, 0, n)
        edits = json.loads((tmp_path / f"base{n}" / "edits.json").read_text())["edits"]
        assert len({e["id"] for e in edits}) == len(edits)
        pairs[n] = {e["id"]: e for e in edits if len(e["instructions"]) == 2}
    assert len(pairs[1]) == len(photos) * 4 and len(pairs[3]) == 3 * len(pairs[1])
    assert all(pairs[3][k] == v for k, v in pairs[1].items())
    draws = {tuple(e["image"] for e in pairs[3].values() if e["id"].startswith(f"composed/{p.name}")) for p in photos}
    assert any(len(set(d)) > 1 for d in draws)  # the draws differ (sources at other grid values)


def test_composed_error_psnr_adds_mean_squared_errors():
    assert ND.composed_error_psnr(30.0, 30.0) == pytest.approx(30 - 10 * math.log10(2))
    assert ND.composed_error_psnr(20.0, 60.0) == pytest.approx(20.0, abs=1e-3)


def test_train_transformer_trains_every_weight_and_no_lora(tmp_path):
    from kontext_sliders.trainer.methods.numeric.method import NumericMethod
    base = {"method": "numeric", "model": {"scratch": DEMO_TRANSFORMER, "gradient_checkpointing": False,
                                           "train_transformer": True},
            "data": {"text_encoder": "learned", "pixel_space": True}}
    method = NumericMethod(config_from_dict(base))
    method.registry = DEFAULT_REGISTRY
    model = method.build_model()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters()} and not any("lora_" in n for n in trainable)
    with pytest.raises(ConfigError, match="model.train_transformer must be true or false"):
        config_from_dict(base | {"model": {"scratch": DEMO_TRANSFORMER, "train_transformer": "yes"}})


def test_transformer_lr_trains_the_bases_own_weights_at_their_own_rate(tmp_path):
    """optim.transformer_lr: the base transformer's weights (not a LoRA's) in their own optimiser group; one AdamW
    step moves each weight by about its group's rate."""
    from kontext_sliders.trainer.engine.loop import make_optimizer, parameter_groups
    from kontext_sliders.trainer.methods.numeric.method import NumericMethod
    config = config_from_dict({"method": "numeric", "data": {"text_encoder": "learned", "pixel_space": True},
                               "model": {"scratch": DEMO_TRANSFORMER, "gradient_checkpointing": False,
                                         "train_transformer": True},
                               "optim": {"lr": 1e-3, "transformer_lr": 1e-5, "weight_decay": 0.0}})
    method = NumericMethod(config)
    method.registry = DEFAULT_REGISTRY
    model = method.build_model()
    names = {id(p): n for n, p in model.named_parameters()}
    rest, base = parameter_groups(config, model)
    assert {names[id(p)] for p in base["params"]} == {n for n, _ in model.named_parameters()
                                                       if n.startswith("transformer.")}
    assert all(names[id(p)].startswith("adapter.") for p in rest["params"]) and rest["params"]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer, _ = make_optimizer(config, [rest, base])
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    optimizer.step()
    step = {n: (p.detach() - before[n]).abs().max().item() for n, p in model.named_parameters()}
    assert all(step[n] == pytest.approx(1e-5, rel=1e-2) for n in step if n.startswith("transformer."))
    assert all(step[n] == pytest.approx(1e-3, rel=1e-2) for n in step if n.startswith("adapter."))
    # unset: one group at optim.lr; a full Kontinuous fine-tune: the projector and text vectors at optim.lr
    assert len(parameter_groups(config_from_dict({"method": "numeric"}), model)) == 1
    kontinuous = config_from_dict({"model": {"scratch": DEMO_TRANSFORMER, "gradient_checkpointing": False,
                                             "train_transformer": True}, "lora": {"enabled": False},
                                   "data": {"text_encoder": "learned"}, "optim": {"transformer_lr": 1e-5}})
    from kontext_sliders.trainer.methods.kontinuous.model import build_model
    k_model = build_model(kontinuous, ["a"])
    k_names = {id(p): n for n, p in k_model.named_parameters()}
    k_rest, k_base = parameter_groups(kontinuous, k_model)
    assert {k_names[id(p)].split(".")[0] for p in k_rest["params"]} == {"projector", "text_encoder"}
    assert len(k_base["params"]) == len(list(k_model.transformer.parameters())) and k_base["lr"] == 1e-5


def test_transformer_lr_config_errors(tmp_path):
    base = {"method": "numeric", "model": {"scratch": DEMO_TRANSFORMER, "train_transformer": True}}
    for bad in (0, -1e-4, "fast", True):
        with pytest.raises(ConfigError, match="optim.transformer_lr must be a number > 0"):
            config_from_dict(base | {"optim": {"transformer_lr": bad}})
    with pytest.raises(ConfigError, match="keeps them frozen; set model.train_transformer: true"):
        config_from_dict({"method": "numeric", "model": {"scratch": DEMO_TRANSFORMER},
                          "optim": {"transformer_lr": 1e-4}})
    with pytest.raises(ConfigError, match="and lora.enabled: false for a kontinuous run"):  # the LoRA freezes it
        config_from_dict({"model": {"scratch": DEMO_TRANSFORMER, "train_transformer": True},
                          "optim": {"transformer_lr": 1e-4}})
    assert config_from_dict(base | {"optim": {"transformer_lr": 1e-4}}).optim.transformer_lr == 1e-4


def test_numeric_demo_needs_two_registry_tasks(tmp_path, capsys):
    assert cli_main(["demo", "--method", "numeric", "--tasks", "exposure", "--out", str(tmp_path / "x")]) == 2
    assert "two-edit" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    for bad in (["--base-steps", "-1"], ["--base-steps", "10", "--finetune-rank", "0"],
                ["--base-steps", "10", "--base-composed", "0"]):
        assert cli_main(["demo", "--method", "numeric", "--out", str(tmp_path / "x"), *bad]) == 2
        assert "--base-steps must be >= 0, --finetune-rank and --base-composed >= 1" in capsys.readouterr().err
    assert cli_main(["demo", "--method", "numeric", "--out", str(tmp_path / "x"), "--finetune-lr", "0"]) == 2
    assert "--finetune-lr must be > 0" in capsys.readouterr().err
    for bad in (["--base-steps", "0", "--finetune-transformer-lr", "1e-4"],
                ["--base-steps", "10", "--finetune", "lora", "--finetune-transformer-lr", "1e-4"]):
        assert cli_main(["demo", "--method", "numeric", "--out", str(tmp_path / "x"), *bad]) == 2
        assert "needs --base-steps > 0 and --finetune whole" in capsys.readouterr().err
    assert cli_main(["demo", "--method", "numeric", "--out", str(tmp_path / "x"), "--base-steps", "10",
                     "--finetune-transformer-lr", "-1"]) == 2
    assert "--finetune-transformer-lr must be > 0" in capsys.readouterr().err
    assert cli_main(["demo", "--method", "numeric", "--out", str(tmp_path / "x"), "--base-steps", "0",
                     "--lines-pooled", "sum"]) == 2
    assert "--lines-pooled sets the text of the base editor and its fine-tunes: it needs --base-steps > 0" in (
        capsys.readouterr().err)
    with pytest.raises(SystemExit):  # argparse: the choices are named
        cli_main(["demo", "--method", "numeric", "--out", str(tmp_path / "x"), "--finetune", "all"])
    assert "invalid choice: 'all' (choose from" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_the_numeric_demo_defaults_are_the_setting_that_holds_its_claims(tmp_path, monkeypatch, capsys):
    """The command's defaults: a 3000-step base editor with the pooled sum, both models fine-tuned whole at 3e-4
    for 3000 steps (README: every claim on five seeds of six); the options override them, ``--base-steps 0``
    trains both from scratch."""
    seen = []

    def capture(settings):
        seen.append(settings)
        raise ValueError("captured")
    monkeypatch.setattr(ND, "run_numeric_demo", capture)
    assert cli_main(["demo", "--method", "numeric", "--out", str(tmp_path / "x")]) == 2
    s = seen.pop()
    assert (s.base_steps, s.steps, s.finetune, s.finetune_lr, s.lines_pooled) == (3000, 3000, "whole", 3e-4, "sum")
    assert ND.numeric_config(s, tmp_path, tmp_path / "base").data.lines_pooled == "sum"
    assert cli_main(["demo", "--method", "numeric", "--out", str(tmp_path / "x"), "--lines-pooled", "mean",
                     "--steps", "10"]) == 2
    s = seen.pop()
    assert (s.lines_pooled, s.steps, s.base_steps) == ("mean", 10, 3000)
    assert cli_main(["demo", "--method", "numeric", "--out", str(tmp_path / "x"), "--base-steps", "0"]) == 2
    assert seen.pop().base_steps == 0
    assert "captured" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_the_readme_numeric_demo_from_scratch_measures_what_holds(tmp_path):
    """The README's from-scratch command (``--base-steps 0 --steps 1500``, about 6 minutes: the defaults' 17 would
    take the test run past its time). What holds at this scale on every seed measured (README): the order swap
    changes nothing, and every model edits (above doing nothing), the two-line prompt too. Not asserted, because
    measured NOT to hold on every seed, or by too thin a margin to survive another thread count (README): the PSNR
    lead over the Kontinuous baseline (on average on all three seeds, +0.17 dB on seed 0; per task on five of six),
    the two-line prompt within 2 dB of the two single edits chained (seeds 0 and 2) and of the single edits on
    their own truth (about 8 dB below)."""
    out = tmp_path / "demo_output"
    assert cli_main(["demo", "--method", "numeric", "--out", str(out), "--base-steps", "0", "--steps", "1500"]) == 0
    metrics = json.loads((out / "metrics_numeric.json").read_text())
    two = metrics["two_edit"]
    assert two["swap_db"] < 0.5
    assert two["psnr_ab"] > two["psnr_no_edit"] + 1
    assert all(t["psnr_numeric"] > t["psnr_no_edit"] + 1 and t["psnr_kontinuous"] > t["psnr_no_edit"] + 1
               for t in metrics["tasks"])
