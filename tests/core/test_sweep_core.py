"""core/sweep.py: value lists, labels, strict parsing, perceptual re-spacing."""
import math

import pytest
import torch

from kontext_sliders.core.sweep import (Sweep, format_value, frame_distances, linear_values, parse_values,
                                        perceptual_values, spread)


def test_linear_values_and_labels():
    assert linear_values(0, 1, 5) == [0, 0.25, 0.5, 0.75, 1]
    assert linear_values(1.5, -0.5, 3) == [1.5, 0.5, -0.5]
    assert [format_value(v) for v in (0.375, 1 / 3, 2.0, -0.0, 1e-9, -0.25)] == ["0.375", "0.333", "2", "0", "0",
                                                                                  "-0.25"]
    with pytest.raises(ValueError, match="count must be 2"):
        linear_values(0, 1, 1)


def test_explicit_values_are_strict():
    assert parse_values("0, .5; 1.5e0") == [0, 0.5, 1.5]
    for bad in ("0, 1_0", "0, nan", "0, x"):
        with pytest.raises(ValueError, match="is not a number"):
            parse_values(bad)
    with pytest.raises(ValueError, match="1 given"):
        parse_values("0")


def test_sweep_checks_its_values():
    with pytest.raises(ValueError, match="finite"):
        Sweep((0.0, math.inf))
    with pytest.raises(ValueError, match="spacing"):
        Sweep((0.0, 1.0), spacing="log")
    assert Sweep((0.0, 0.5, 1.0)).labels() == ["0", "0.5", "1"]


def test_perceptual_values_equalise_a_nonlinear_curve():
    # frames whose content moves like v**3: linear steps are very uneven, re-spaced steps even
    def frames(values):
        return torch.tensor([[v ** 3] * 4 for v in values])

    probe = linear_values(0, 1, 33)
    chosen = perceptual_values(probe, frame_distances(frames(probe)).tolist(), 9)
    assert chosen[0] == 0 and chosen[-1] == 1 and all(a < b for a, b in zip(chosen, chosen[1:]))
    linear_spread = spread(frame_distances(frames(linear_values(0, 1, 9))).tolist())
    perceptual_spread = spread(frame_distances(frames(chosen)).tolist())
    assert linear_spread > 30 and perceptual_spread < 1.2, (linear_spread, perceptual_spread)
    # exact inversion for a curve the piecewise-linear interpolation represents exactly
    assert perceptual_values([0, 1, 2], [1, 3], 5) == pytest.approx([0, 1, 4 / 3, 5 / 3, 2])


def test_perceptual_values_in_descending_order_and_flat_probe():
    assert perceptual_values([1, 0.5, 0], [3, 1], 3) == pytest.approx([1, 2 / 3, 0])  # 2 of 4 units: 2/3 into the first step
    assert perceptual_values([0, 1], [0], 3) == [0, 0.5, 1]  # nothing changes: linear


def test_frame_order_ping_pong():
    from kontext_sliders.core.sweep import frame_order
    assert frame_order(4) == [0, 1, 2, 3]
    assert frame_order(4, ping_pong=True) == [0, 1, 2, 3, 2, 1]
    assert frame_order(2, ping_pong=True) == [0, 1]
    assert frame_order(1, ping_pong=True) == [0]
    assert all(len(frame_order(n, True)) == 2 * n - 2 for n in range(2, 10))
    with pytest.raises(ValueError, match="at least one frame"):
        frame_order(0)
