"""``demo --method compare``: the model-agnostic knobs against the trained Kontinuous slider on one editor; the
trainer-side knobs' ends, the identity measure, and the demo end to end at a tiny size."""
import json
import math

import pytest
import torch

from kontext_sliders.trainer.data import cat
from kontext_sliders.trainer.data.edits import read_edits
from kontext_sliders.trainer.engine.features import PixelCodec
from kontext_sliders.trainer.families import family
from kontext_sliders.trainer.methods.knobs import compare as C
from kontext_sliders.trainer.methods.knobs.evaluation import KnobEditor


def test_conditioning_strength_and_edit_velocity_ends_on_the_trainer_side():
    torch.manual_seed(2)
    flux = family("flux1")
    editor = KnobEditor(flux.transformer_class()(**flux.DEMO_TRANSFORMER), "increase the exposure", 4, 1,
                        sample_steps=2, seed=0, codec=PixelCodec(8, 6.0))
    sources = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    plain, empty = editor.render(sources), editor.render(sources, editor.empty)
    assert (plain - empty).abs().max() > 1e-4
    # 1: the plain editor, bit for bit; 0: the empty prompt (exactly its tensors / the blend's rounding)
    assert torch.equal(editor.conditioning_strength(sources, 1.0), plain)
    assert torch.equal(editor.edit_velocity(sources, 1.0), plain)
    assert torch.equal(editor.conditioning_strength(sources, 0.0), empty)
    torch.testing.assert_close(editor.edit_velocity(sources, 0.0), empty, rtol=0, atol=1e-5)
    for knob in (editor.conditioning_strength, editor.edit_velocity):
        assert (knob(sources, 0.5) - plain).abs().max() > 1e-4 and (knob(sources, 0.5) - empty).abs().max() > 1e-4


def test_identity_is_measured_where_the_exact_edit_leaves_the_image():
    sources = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    truth = sources.expand(3, 1, 3, 8, 8).clone()
    truth[-1, 0, :, :, :4] *= 0.5  # the full edit changes the left half only
    sweep = truth.clone()
    sweep[:, 0, :, :, 4:] += 0.1  # a knob that also moves the untouched right half
    assert C.identity_psnr(sweep, truth, sources) == pytest.approx(20.0, abs=1e-3)
    assert C.identity_psnr(truth, truth, sources) == pytest.approx(100.0)  # untouched: the floor of the MSE
    assert math.isnan(C.identity_psnr(sweep, sweep * 0, sources))  # a global edit: no such pixels


def test_the_base_editor_sees_each_edit_at_full_strength_and_the_empty_prompt_as_no_change(tmp_path):
    task = cat.TASKS["exposure"]
    photos = [cat.Photo("a", torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(1)) * 0.6)]
    trajectories = cat.synthesize(tmp_path / "frames", photos, [task], 5, 0)
    C.base_samples(tmp_path / "base", tmp_path / "frames", trajectories, {"exposure": task})
    samples = {s.id: s for s in read_edits(tmp_path / "base")}
    none, edit = samples["exposure/a/none"], samples["exposure/a/edit"]
    assert none.instructions == () and none.target == none.image == edit.image
    assert edit.instructions == (task.instruction(),) and edit.target.endswith(trajectories[0].frames[-1].path)


def test_compare_demo_end_to_end_tiny(tmp_path):
    s = C.CompareDemoSettings(tmp_path / "demo", tasks="exposure,vignette", photo_sizes=(16, 24), crops_per_photo=2,
                              eval_crops_per_photo=1, steps=3, base_steps=3, batch_size=4, sample_steps=2,
                              threads=1, progress=False)
    result = C.run_compare_demo(s)
    metrics = json.loads((s.out / "metrics_compare.json").read_text())
    assert list(metrics["tasks"]) == ["exposure", "vignette"]
    for task, rows in metrics["tasks"].items():
        assert [r["knob"] for r in rows] == list(C.KNOBS)
        assert all(len(r["measured"]) == len(C.SWEEP) for r in rows)
        assert all(math.isnan(r["identity_psnr"]) == (task == "exposure") for r in rows), task
    assert metrics["identities_hold"] and result.identities_hold()  # every training-free knob at 1 = the editor
    report = (s.out / "report_compare.md").read_text()
    assert "| vignette | Kontext Edit Velocity |" in report and "Kontinuous Kontext Apply (trained)" in report
    from PIL import Image
    sheet = Image.open(s.out / "compare_contact_sheet.png")
    # per task: the exact row and the four knobs', a blank row between tasks; a column per sweep strength
    assert sheet.size == (48 * len(C.SWEEP), 48 * (2 * 5 + 1))
    assert (s.out / "weights" / "kontinuous_demo.safetensors").is_file()
