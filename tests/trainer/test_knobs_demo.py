"""`kontext-sliders demo --method knobs`: the training-free knobs on a tiny editor of each family, measured."""
import json
import math

import pytest
import torch

from kontext_sliders.trainer.cli import main as cli_main
from kontext_sliders.trainer.data import cat
from kontext_sliders.trainer.data.edits import read_edits
from kontext_sliders.trainer.families import FAMILIES, family
from kontext_sliders.trainer.methods.knobs import demo as KD
from kontext_sliders.trainer.methods.knobs.evaluation import (KnobEditor, KnobSweep, knob_sweep, largest_reversal,
                                                              monotone_direction)

pytest.importorskip("diffusers")


def test_monotone_direction():
    assert monotone_direction([0.1, 0.5, 0.9]) == 1
    assert monotone_direction([1.1, 1.0, 0.8]) == -1
    assert monotone_direction([0.05, 0.04, 0.5, 1.0]) == 0  # a step back
    assert monotone_direction([0.05, 0.04, 0.5, 1.0], tolerance=0.02) == 1  # ... within the noise floor
    assert monotone_direction([0.2, 1.0, 0.8], tolerance=0.02) == 0
    assert monotone_direction([0.3, 0.3]) == 0 and monotone_direction([0.1, math.nan, 0.3]) == 0
    assert monotone_direction([0.96, 0.96, 0.95], tolerance=0.02) == 0  # flat: no effect is not monotone
    assert largest_reversal([0.0, 1.0, 0.7, 0.9]) == pytest.approx(0.3)
    assert largest_reversal([1.0, 0.5, 0.6]) == pytest.approx(0.1) and largest_reversal([0.0, 1.0]) == 0.0


def test_sweep_sides():
    sweep = KnobSweep("sliders", [0.0, 0.5, 1.0, 1.5], 1.0, [0.0, 0.4, 1.0, 0.9], True)
    assert (sweep.side(False), sweep.side(True), sweep.monotone) == (1, -1, False)
    summary = sweep.summary()
    assert summary["below_neutral"] == 1 and summary["above_neutral"] == -1
    # claimed over 0 ... 1 only: it holds there, though not over the whole sweep
    claimed = KnobSweep("sliders", [0.0, 0.5, 1.0, 1.5], 1.0, [0.0, 0.4, 1.0, 0.9], True, claimed_to=1.0)
    assert claimed.holds and not claimed.monotone and not sweep.holds
    assert not KnobSweep("sliders", [0.0, 0.5, 1.0], 1.0, [0.5, 0.4, 1.0], True, claimed_to=1.0).holds
    assert summary["largest_reversal"] == pytest.approx(0.1)


def test_knob_sweep_measures_each_value_and_compares_neutral_bit_for_bit():
    task = cat.get_task("exposure")
    sources = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.5

    def render(ev):
        return task.apply(sources, ev)
    sweep = knob_sweep("modulation", render, [0.0, 0.5, 1.0], 1.0, render(1.0), sources, task)
    assert sweep.measured == pytest.approx([0.0, 0.5, 1.0], abs=1e-4) and sweep.direction == 1
    assert sweep.identical_at_neutral and sweep.frames.shape == (3, 2, 3, 8, 8)
    nudged = render(1.0) + 1e-7
    assert not knob_sweep("modulation", render, [0.0, 1.0], 1.0, nudged, sources, task).identical_at_neutral
    with pytest.raises(ValueError, match="neutral value 1"):
        knob_sweep("sliders", render, [0.0, 0.5], 1.0, nudged, sources, task)


def test_the_editor_data_is_the_empty_prompt_and_one_exact_edit(tmp_path):
    task = cat.get_task("exposure").with_range(0.0, 1.0)
    photos = [cat.Photo("a", torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(1)) * 0.6)]
    KD.write_knob_edits(tmp_path, photos, task, 0)
    samples = {s.id: s for s in read_edits(tmp_path)}
    assert samples["a/none"].instructions == () and samples["a/none"].target == samples["a/none"].image
    assert samples["a/edit"].instructions == ("increase the exposure",)
    from kontext_sliders.trainer.data.images import load_rgb
    source, target = (load_rgb(tmp_path / n, 8) for n in ("a.png", samples["a/edit"].target))
    assert task.estimate_value((source + 1) / 2, (target + 1) / 2) == pytest.approx(1.0, abs=0.05)


def test_instruction_guidance_at_0_is_the_prompt_without_the_line_and_at_1_the_plain_editor():
    torch.manual_seed(3)
    qwen = family("qwen_image")
    editor = KnobEditor(qwen.transformer_class()(**qwen.DEMO_TRANSFORMER), "increase the exposure", 4, 2,
                        sample_steps=2, seed=0)
    sources = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    plain = editor.render(sources)
    assert torch.equal(editor.instruction_guidance(sources, 1.0), plain)
    without = editor.render(sources, editor.empty)
    assert (without - plain).abs().max() > 1e-4
    torch.testing.assert_close(editor.instruction_guidance(sources, 0.0), without, rtol=0, atol=1e-5)
    assert (editor.instruction_guidance(sources, 2.0) - plain).abs().max() > 1e-4


def tiny_settings(out, **extra):
    return KD.KnobsDemoSettings(out, photo_sizes=(16, 24), crops_per_photo=2, eval_crops_per_photo=1, steps=3,
                                batch_size=4, sample_steps=2, progress=False, **extra)


def test_knobs_demo_end_to_end_tiny(tmp_path):
    settings = tiny_settings(tmp_path / "demo")
    result = KD.run_knobs_demo(settings)
    out = settings.out
    for name in ["report_knobs.md", "metrics_knobs.json"] + [f"knobs_{f}.png" for f in FAMILIES] + \
            [f"weights/editor_{f}/transformer/config.json" for f in FAMILIES]:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    metrics = json.loads((out / "metrics_knobs.json").read_text())
    assert list(metrics["families"]) == list(FAMILIES) and metrics["exact"] == pytest.approx(1.0, abs=0.02)
    for name, family_metrics in metrics["families"].items():
        knobs = {k["knob"]: k for k in family_metrics["knobs"]}
        assert knobs["modulation"]["values"] == KD.MODULATION and knobs["sliders"]["values"] == KD.SLIDERS
        assert knobs["guidance"]["values"] == KD.GUIDANCE
        # neutral = the plain editor bit for bit, trained or not
        assert all(k["identical_at_neutral"] for k in knobs.values()), name
        assert len(knobs["sliders"]["measured"]) == len(KD.SLIDERS)
    config = json.loads((out / "weights" / "editor_qwen_image" / "transformer" / "config.json").read_text())
    assert config["_class_name"] == "QwenImageTransformer2DModel"
    report = (out / "report_knobs.md").read_text()
    assert "## FLUX.2 (`flux2`)" in report and "Kontext Instruction Sliders" in report
    assert result.targets_met() == all(k["holds"] and k["identical_at_neutral"]
                                       for f in metrics["families"].values() for k in f["knobs"])
    sliders = [k for f in metrics["families"].values() for k in f["knobs"] if k["knob"] == "sliders"]
    assert all(k["claimed_to"] == 1.0 for k in sliders)


def test_knobs_demo_command_errors(tmp_path, capsys):
    assert cli_main(["demo", "--method", "knobs", "--tasks", "exposure,blur", "--out", str(tmp_path / "x")]) == 2
    assert "one task" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["demo", "--method", "knobs", "--family", "sdxl", "--out", str(tmp_path / "y")])
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


@pytest.mark.slow
def test_the_knobs_demo_with_fewer_steps_holds_monotone_knobs_and_neutral_identity(tmp_path):
    """Every family's editor (300 steps): every knob at 1 is the plain editor bit for bit; Instruction Guidance and
    Modulation Strength move the measured exposure one way over their whole sweeps (0 ... 2), Instruction Sliders
    over 0 ... 1 (past 1 a tiny editor's edit stops growing: reported, not held; docs/trainer.md)."""
    out = tmp_path / "demo_output"
    assert cli_main(["demo", "--method", "knobs", "--steps", "300", "--out", str(out), "--require-targets"]) == 0
    metrics = json.loads((out / "metrics_knobs.json").read_text())
    assert list(metrics["families"]) == list(FAMILIES)
    for name, family_metrics in metrics["families"].items():
        assert family_metrics["plain"] > 0.7 and abs(family_metrics["empty_prompt"]) < 0.1, name  # it learned the edit
        knobs = {k["knob"]: k for k in family_metrics["knobs"]}
        assert all(k["identical_at_neutral"] for k in knobs.values()), name
        assert knobs["guidance"]["direction"] == 1 and knobs["guidance"]["measured"][-1] > 1.4, name
        assert knobs["modulation"]["monotone"], (name, knobs["modulation"]["measured"])
        assert knobs["sliders"]["below_neutral"] == 1, (name, knobs["sliders"]["measured"])
