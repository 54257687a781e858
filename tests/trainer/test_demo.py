"""The offline demo: its metrics, its evaluation, and the whole command on a very small setting."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("kornia")
pytest.importorskip("matplotlib")
pytest.importorskip("skimage")

from kontext_sliders.core.kontinuous.weights import load_kontinuous  # noqa: E402
from kontext_sliders.trainer.methods.kontinuous import demo as D  # noqa: E402
from kontext_sliders.trainer.cli import main as cli_main  # noqa: E402
from kontext_sliders.trainer.data import cat as C  # noqa: E402
from kontext_sliders.trainer.engine.metrics import PSNR_CAP_DB, pearson_r, psnr, triangle_deficit  # noqa: E402


@pytest.fixture(scope="module")
def sources() -> torch.Tensor:
    photos = C.skimage_photos(["chelsea", "coffee"], size=64)
    g = torch.Generator().manual_seed(0)
    return torch.stack([c.image for p in photos for c in D.crops(p, 16, 3, g)])


# ---------------------------------------------------------------- metrics

def test_psnr_of_a_known_error_and_of_identical_images():
    a = torch.zeros(2, 3, 8, 8)
    torch.testing.assert_close(psnr(a + 0.1, a), torch.full((2,), 20.0))  # MSE 0.01 -> 20 dB
    assert torch.all(psnr(a, a) == PSNR_CAP_DB)
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(a, a[:1])


def test_pearson_sign_and_constant_input():
    assert pearson_r([0, 1, 2, 3], [1, 3, 5, 7]) == pytest.approx(1.0)
    assert pearson_r([0, 1, 2, 3], [3, 2, 1, 0]) == pytest.approx(-1.0)
    assert math.isnan(pearson_r([0, 1, 2], [5, 5, 5]))


def test_triangle_deficit_zero_on_a_straight_sweep_positive_when_it_jumps_or_turns_back():
    a, b = torch.rand(3, 8, 8), torch.rand(3, 8, 8)
    straight = [a + (b - a) * k / 8 for k in range(9)]
    assert triangle_deficit(straight) == pytest.approx(0.0, abs=1e-9)
    uneven = [a + (b - a) * (k / 8) ** 3 for k in range(9)]  # still on the segment: no deficit
    assert triangle_deficit(uneven) == pytest.approx(0.0, abs=1e-9)
    back_and_forth = [a if k % 2 else b for k in range(9)]
    assert triangle_deficit(back_and_forth) == 0.0  # every triple's ends coincide: skipped
    sideways = [a + (b - a) * k / 8 + (0.3 * torch.rand(3, 8, 8) if k == 4 else 0) for k in range(9)]
    assert triangle_deficit(sideways) > 0.1


# ---------------------------------------------------------------- evaluation

def test_evaluation_scores_the_exact_edit_perfectly(sources):
    exact = lambda x, task, s: task.apply(x, task.value_at(s))
    for task in C.select_tasks("exposure,saturation", "saturation=1:0"):
        e, model, truth = D.evaluate_task(exact, task, sources)
        assert torch.equal(model, truth)
        assert all(p == PSNR_CAP_DB for p in e.psnr_model)
        assert e.abs_r_held_out > 0.99 and e.abs_r_all > 0.99
        assert e.triangle_deficit_model == e.triangle_deficit_truth
        assert e.psnr_no_edit[0] == PSNR_CAP_DB and e.psnr_no_edit[-1] < 30  # strength 0 is the identity
        assert e.targets_met() is True
        requested, from_output, from_source = e.first_step
        assert from_output == pytest.approx(requested, rel=0.02) and from_source == pytest.approx(requested, rel=0.02)


def test_the_smoothness_targets_see_a_dead_zone_a_cast_and_uneven_steps(sources):
    """What the fidelity round fixed, each on its own: a first step that undershoots, a cast, uneven steps."""
    exact = lambda x, task, s: task.apply(x, task.value_at(s))
    exposure, saturation = C.select_tasks("exposure,saturation", "saturation=1:0")
    failed = lambda e: {c.what for c in e.checks() if not c.met}
    dead = lambda x, task, s: task.apply(x, task.value_at(max(0.0, s - 0.06) / 0.94))  # 1/8 -> about 0.07
    e, _, _ = D.evaluate_task(dead, exposure, sources)
    assert {"first step / asked, from the output at 0", "first step / asked, from no change"} <= failed(e)
    assert e.first_step[2] / e.first_step[0] < 0.6 and not e.targets_met()
    teal = torch.tensor([-0.02, 0.01, 0.01]).view(1, 3, 1, 1)
    cast = lambda x, task, s: (task.apply(x, task.value_at(s)) + s * teal).clamp(0, 1)
    e, _, _ = D.evaluate_task(cast, saturation, sources)
    assert "residual chroma, worst strength" in failed(e) and e.residual_worst_strength > 0.03
    required = {c.what for c in e.checks() if c.required}  # --require-targets holds the demo to it
    assert "residual chroma, worst strength" in required and not e.targets_met()
    uneven = lambda x, task, s: task.apply(x, task.value_at(s ** 2))
    e, _, _ = D.evaluate_task(uneven, exposure, sources)
    assert "step KL" in failed(e) and e.step_kl_model > 0.02
    ok, _, _ = D.evaluate_task(exact, saturation, sources)
    assert failed(ok) == set() and ok.residual_worst_strength < 0.01


def test_the_demo_trains_on_no_held_out_strength():
    """Its frames sit at every twelfth, between the held-out odd eighths, never on one."""
    s = D.KontinuousDemoSettings(Path("."))
    trained = [k / (s.train_frames - 1) for k in range(s.train_frames)]
    assert len(trained) > 5 and all(abs(t - h) > 1e-3 for t in trained for h in D.HELD_OUT_STRENGTHS)
    assert s.pixel_chroma_scale > 0 and len(s.tasks.split(",")) >= 4


def test_evaluation_sees_an_editor_that_does_nothing_or_snaps_to_trained_strengths(sources):
    task = C.TASKS["exposure"]
    nothing = lambda x, task, s: x.clone()
    e, _, _ = D.evaluate_task(nothing, task, sources)
    assert e.psnr_model == e.psnr_no_edit and math.isnan(e.abs_r_held_out) and e.targets_met() is False

    snapping = lambda x, task, s: task.apply(x, task.value_at(round(s * 4) / 4))  # a slider that only knows 5 stops
    snap, _, _ = D.evaluate_task(snapping, task, sources)
    exact, _, _ = D.evaluate_task(lambda x, task, s: task.apply(x, task.value_at(s)), task, sources)
    trained = [k for k, s in enumerate(snap.strengths) if s not in D.HELD_OUT_STRENGTHS]
    assert all(snap.psnr_model[k] == PSNR_CAP_DB for k in trained)
    assert snap.psnr_held_out < exact.psnr_held_out
    assert snap.step_kl_model > exact.step_kl_model + 0.1  # half the steps do nothing, the others double


def test_evaluation_reports_the_cast_that_the_saturation_value_misses(sources):
    """The demo's blind spot: outputs that should be grey came out teal while the saturation read ~0."""
    task = C.select_tasks("saturation", "saturation=1:0")[0]
    teal = torch.tensor([-0.03, 0.015, 0.01]).view(1, 3, 1, 1)  # about what the demo's editor left at s = 1
    tinted = lambda x, task, s: (task.apply(x, task.value_at(s)) + s * teal).clamp(0, 1)
    e, _, _ = D.evaluate_task(tinted, task, sources)
    exact, _, _ = D.evaluate_task(lambda x, task, s: task.apply(x, task.value_at(s)), task, sources)
    assert e.residual_name == "residual chroma" and len(e.residual_model) == len(D.SWEEP)
    # teal over orange photos: partly their opposite hue, which the signed value sees as "past grey" ...
    assert max(e.measured[-1]) < -0.05
    assert min(e.residual_model[-1]) > 0.03  # ... partly across their hues, which only the residual sees
    assert max(v for row in exact.residual_model for v in row) < 0.01 and exact.residual_held_out < 0.01
    assert e.residual_held_out > exact.residual_held_out
    none, _, _ = D.evaluate_task(lambda x, task, s: x.clone(), C.TASKS["exposure"], sources)
    assert none.residual_model == [] and math.isnan(none.residual_held_out)


# ---------------------------------------------------------------- report pictures

def test_sweep_gif_has_a_strength_label_and_a_divider_between_model_and_exact(tmp_path):
    from PIL import Image, ImageSequence
    from kontext_sliders.trainer.methods.kontinuous import report as R
    g = torch.Generator().manual_seed(0)
    still = torch.rand(2, 3, 4, 4, generator=g)  # the same images at every strength: only the label moves
    sweeps = {"exposure": (still.expand(len(D.SWEEP), -1, -1, -1, -1), (1 - still).expand(len(D.SWEEP), -1, -1, -1, -1))}
    R.save_sweep_gif(sweeps, D.SWEEP, [0, 1], tmp_path / "sweep.gif")
    with Image.open(tmp_path / "sweep.gif") as gif:
        frames = [np.asarray(f.convert("RGB")).astype(int) for f in ImageSequence.Iterator(gif)]
    assert len(frames) == 2 * len(D.SWEEP) - 2  # forward, then back
    left = 2 * R.TILE  # two model tiles, then the divider, then two exact tiles
    for frame in frames:
        assert frame.shape[1] == 4 * R.TILE + R.DIVIDER_PX
        divider = frame[:, left:left + R.DIVIDER_PX]
        assert (divider == divider[0, 0]).all()  # one constant colour, top to bottom
        assert (abs(divider[0, 0] - R.DIVIDER_COLOUR) <= 8).all()
        assert not (frame[R.HEADER_PX:, left - 1] == divider[0, 0]).all()  # the tiles are not part of it
    header = slice(0, R.HEADER_PX)
    for a, b in zip(frames[:len(D.SWEEP)], frames[1:len(D.SWEEP)]):
        assert (a[header] != b[header]).any()  # the label changes with the strength ...
        assert (a[R.HEADER_PX:] == b[R.HEADER_PX:]).all()  # ... and nothing else did
    first = R.sweep_frame([[R._pil(still[0])]], [[R._pil(still[0])]], "s = 0.375 (held out)")
    blank = R.sweep_frame([[R._pil(still[0])]], [[R._pil(still[0])]], "")
    assert np.asarray(first)[:R.HEADER_PX].tolist() != np.asarray(blank)[:R.HEADER_PX].tolist()


def test_psnr_plot_keeps_the_identical_point_out_of_range_and_labels_the_target(sources):
    from kontext_sliders.trainer.methods.kontinuous import report as R
    under = lambda x, task, s: task.apply(x, task.value_at(0.9 * s))  # strength 0: the identity, exactly
    e, _, _ = D.evaluate_task(under, C.TASKS["exposure"], sources)
    assert e.psnr_no_edit[0] == PSNR_CAP_DB and e.psnr_model[0] == PSNR_CAP_DB
    plt, fig = R.psnr_figure([e])
    try:
        ax = fig.axes[0]
        finite = [p for p in e.psnr_model + e.psnr_no_edit if p < PSNR_CAP_DB]
        low, high = ax.get_ylim()
        assert max(finite) < high < PSNR_CAP_DB and low < min(finite)
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert any(label.startswith("target: 25 dB") for label in labels)
        assert "identical to the exact frame (no finite PSNR)" in labels
    finally:
        plt.close(fig)


# ---------------------------------------------------------------- the whole command, tiny

def test_demo_end_to_end_tiny(tmp_path):
    settings = D.KontinuousDemoSettings(tmp_path / "demo", tasks="exposure,saturation", photo_sizes=(8, 24),
                                        resolution=8, crops_per_photo=2, eval_crops_per_photo=1, steps=4,
                                        batch_size=4, sample_steps=2, progress=False)
    threads_before = torch.get_num_threads()
    result = D.run_demo(settings)
    out = settings.out
    for name in ("report.md", "metrics.json", "sweep.gif", "contact_sheet.png", "plots/psnr.png",
                 "plots/linearity.png", "plots/smoothness.png", "plots/loss.png",
                 "weights/kontinuous_demo.safetensors", "weights/demo_editor.safetensors"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert [e.task for e in result.evaluations] == ["exposure", "saturation"]
    assert all(len(e.psnr_model) == len(D.SWEEP) for e in result.evaluations)

    report = (out / "report.md").read_text()
    metrics = json.loads((out / "metrics.json").read_text())
    for e, m in zip(result.evaluations, metrics["evaluations"]):
        assert m["psnr_held_out"] == pytest.approx(e.psnr_held_out)
        assert f"{e.psnr_held_out:.2f}" in report
    assert "learned embedding per instruction" in report and "chelsea, coffee" in report
    saturation = metrics["evaluations"][1]
    assert saturation["residual_name"] == "residual chroma" and len(saturation["residual_model"]) == len(D.SWEEP)
    assert f"| saturation | residual chroma | {saturation['residual_held_out']:.3f} |" in report
    for e, m in zip(result.evaluations, metrics["evaluations"]):  # every target in the report and metrics.json
        assert m["checks"] == [c._asdict() for c in e.checks()]
        for c in e.checks():
            assert f"| {e.task} | {c.what} |" in report and f"| {c.value:.3g} | {c.target} |" in report
    assert "| saturation | residual chroma, worst strength | 0.116 |" in report  # before the fidelity round
    assert "(13 frames)" in report and f"chroma channels times {settings.pixel_chroma_scale:g}" in report
    frames = json.loads((out / "data" / "manifest.json").read_text())["trajectories"][0]["frames"]
    assert [f["strength"] for f in frames] == pytest.approx([k / 12 for k in range(13)])
    assert metrics["train"]["steps"] == 4 and metrics["train"]["peak_memory_bytes"] > 0
    assert metrics["torch_threads"] == settings.threads == 2  # in effect during the run ...
    assert torch.get_num_threads() == threads_before  # ... and the caller's setting back afterwards

    # the exported projector file is the loader's format, and the rebuilt editor uses it
    weights = load_kontinuous(out / "weights" / "kontinuous_demo.safetensors")
    editor = D.load_editor(out / "weights" / "demo_editor.safetensors", out / "weights" / "kontinuous_demo.safetensors")
    for name, tensor in weights.projector_state.items():
        assert torch.equal(editor.projector.state_dict()[name], tensor)
    assert weights.projector_config.hidden_size == 64
    codec = D.editor_codec(out / "weights" / "demo_editor.safetensors", 8)
    assert codec.chroma_scale == settings.pixel_chroma_scale > 0


def test_demo_command_rejects_bad_arguments(tmp_path, capsys):
    assert cli_main(["demo", "--out", str(tmp_path / "a"), "--resolution", "7"]) == 2
    assert "--resolution must be even" in capsys.readouterr().err
    assert cli_main(["demo", "--out", str(tmp_path / "b"), "--held-out", "mona_lisa"]) == 2
    assert "mona_lisa" in capsys.readouterr().err
    assert cli_main(["demo", "--out", str(tmp_path / "c"), "--tasks", "sharpness"]) == 2
    assert "unknown CAT task" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_the_kontinuous_demo_runs_on_two_torch_threads_unless_told_otherwise(tmp_path, monkeypatch):
    """Two by default (it runs alone; the numbers are the same), one when asked (beside other work: a wider
    pool spins on a core that another busy process holds); the other demos keep their one."""
    from kontext_sliders.trainer.methods.numeric.demo import NumericDemoSettings
    assert NumericDemoSettings(Path(".")).threads == 1
    seen = []
    monkeypatch.setattr(D, "_run_demo", lambda s: seen.append((s.threads, torch.get_num_threads())) or 1 / 0)
    for argv, threads in ((["demo"], 2), (["demo", "--threads", "1"], 1)):
        with pytest.raises(ZeroDivisionError):
            cli_main([*argv, "--out", str(tmp_path / "x")])
        assert seen.pop() == (threads, threads)
    assert cli_main(["demo", "--threads", "0", "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_the_readme_demo_meets_its_targets(tmp_path):
    """The README's main-job command as written, default settings: exposure must reach its targets."""
    out = tmp_path / "demo_output"
    assert cli_main(["demo", "--out", str(out), "--require-targets"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    exposure = next(e for e in metrics["evaluations"] if e["task"] == "exposure")
    assert exposure["psnr_held_out"] >= 25.0 and exposure["abs_r_held_out"] >= 0.95
    assert exposure["targets_met"] is True
