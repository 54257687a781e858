"""`kontext-sliders demo --method slideredit`: base editor, STLoRA by PPS, measured on held-out photos."""
import json

import pytest

from kontext_sliders.core.slideredit.weights import load_slideredit
from kontext_sliders.trainer.cli import main as cli_main
from kontext_sliders.trainer.data.edits import EditFormatError, read_edits
from kontext_sliders.trainer.methods.kontinuous import demo as D
from kontext_sliders.trainer.methods.slideredit import demo as SD

pytest.importorskip("diffusers")
pytest.importorskip("matplotlib")


def test_slideredit_demo_end_to_end_tiny(tmp_path):
    settings = SD.SliderEditDemoSettings(tmp_path / "demo", photo_sizes=(16, 24), crops_per_photo=2,
                                         eval_crops_per_photo=1, editor_steps=4, slider_steps=4, batch_size=4,
                                         sample_steps=2, progress=False)
    result = SD.run_slideredit_demo(settings)
    out = settings.out
    for name in ("report_slideredit.md", "metrics_slideredit.json", "slideredit_loss.png", "slideredit_sweeps.png",
                 "sweep_stlora_line1.png", "sweep_training_free_line2.png", "weights/slideredit_demo.safetensors",
                 "weights/slideredit_demo_authors_layout/selective_lora.safetensors",
                 "weights/editor/transformer/config.json"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    # the editor's data: 5 prompts per crop with exact targets, the empty one targeting the source itself
    editor_samples = read_edits(out / "data" / "editor")
    assert {len(s.instructions) for s in editor_samples} == {0, 1, 2} and all(s.target for s in editor_samples)
    # the sliders' data: the two-line prompt, no targets
    lines = tuple(t.instruction() for t in D.demo_tasks(settings))
    assert {s.instructions for s in read_edits(out / "data" / "sliders")} == {lines}
    weights = load_slideredit(out / "weights" / "slideredit_demo.safetensors")  # what SliderEditLoader reads
    assert weights.variant == "stlora" and weights.rank == settings.rank and weights.hidden_size == 64
    metrics = json.loads((out / "metrics_slideredit.json").read_text())
    assert [r["task"] for r in metrics["stlora"]] == [t.name for t in D.demo_tasks(settings)] == ["saturation", "blur"]
    assert metrics["pps_loss"]["drop"] == pytest.approx(result.loss_drop)
    exact = metrics["exact"]
    assert all(r["monotonic"] and r["decoupling"] < 0.2 and r["suppression"] is not None for r in exact)
    report = (out / "report_slideredit.md").read_text()
    assert f"{result.loss_drop:.1f}x" in report and "training-free sliders" in report


def test_slideredit_demo_needs_two_tasks(tmp_path, capsys):
    assert cli_main(["demo", "--method", "slideredit", "--tasks", "exposure", "--out", str(tmp_path / "x")]) == 2
    assert "two sub-instructions" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_edit_targets_are_checked(tmp_path):
    def write(edits):
        (tmp_path / "edits.json").write_text(json.dumps({"format": "kontext-sliders-edits", "version": 1,
                                                         "edits": edits}))
    write([{"id": "a", "image": "a.png", "instructions": []}])
    with pytest.raises(EditFormatError, match="non-empty unless the edit names a target"):
        read_edits(tmp_path)
    write([{"id": "a", "image": "a.png", "instructions": ["x"], "target": 3}])
    with pytest.raises(EditFormatError, match="'target' must be an image path"):
        read_edits(tmp_path)
    write([{"id": "a", "image": "a.png", "instructions": [], "target": "a.png"}])
    assert read_edits(tmp_path)[0].target == "a.png"


@pytest.mark.slow
def test_the_readme_slideredit_demo_meets_its_targets(tmp_path):
    """The README's command as written: PPS loss drop >= 10x; per line monotonic, suppression >= 5,
    decoupling <= 0.2 (measured with the CAT estimators on held-out photos)."""
    out = tmp_path / "demo_output"
    assert cli_main(["demo", "--method", "slideredit", "--out", str(out), "--require-targets"]) == 0
    metrics = json.loads((out / "metrics_slideredit.json").read_text())
    assert metrics["targets_met"] is True and metrics["pps_loss"]["drop"] >= 10
