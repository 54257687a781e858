"""The SliderEdit demo's measures, on the exact composed edits (no model)."""
import math

import torch

from kontext_sliders.trainer.data import cat
from kontext_sliders.trainer.methods.slideredit.metrics import ground_truth_editor, slider_sweep

STRENGTHS = [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5]


def setup():
    sources = torch.stack([p.image for p in cat.skimage_photos(["chelsea", "coffee"], 32)])
    tasks = [cat.get_task("exposure").with_range(0.0, 1.0), cat.get_task("temperature").with_range(6500.0, 4000.0)]
    return sources, tasks


def test_exact_edits_are_monotonic_decoupled_and_suppressed_at_zero():
    sources, tasks = setup()
    exact = ground_truth_editor(tasks)
    for line in (0, 1):
        teacher = exact(sources, tuple(0.0 if j == line else 1.0 for j in range(2)))  # the prompt without the line
        sweep, frames = slider_sweep(exact, teacher, sources, tasks, line, STRENGTHS)
        assert frames.shape[:2] == (len(STRENGTHS), 2)
        assert sweep.monotonic and sweep.movement(line) > 1.0  # 0 ... 1.5 of the range
        assert sweep.decoupling < 0.2, sweep.measured
        assert sweep.suppression == math.inf  # strength 0 is the teacher exactly


def test_an_editor_that_moves_both_attributes_is_not_decoupled_and_one_that_ignores_strength_suppresses_nothing():
    sources, tasks = setup()
    exact = ground_truth_editor(tasks)
    both = lambda src, s: exact(src, (s[0], s[0]))  # noqa: E731  the slider drags the other line along
    teacher = exact(sources, (0.0, 1.0))
    sweep, _ = slider_sweep(both, teacher, sources, tasks, 0, STRENGTHS[:5])
    assert sweep.decoupling > 0.5
    stuck = lambda src, s: exact(src, (1.0, 1.0))  # noqa: E731
    sweep, _ = slider_sweep(stuck, teacher, sources, tasks, 0, STRENGTHS)
    assert sweep.suppression == 1.0 and sweep.movement(0) < 1e-6
