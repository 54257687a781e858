"""trainer/data/cat.py: the physical edit operators, their value estimators, and trajectory synthesis."""
import argparse
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from kontext_sliders.trainer.data import cat as C
from kontext_sliders.trainer.data.trajectories import read_manifest


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """64 px images gain nothing from threads, and on a busy machine thread hand-offs made blur fits 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    return torch.stack([p.image for p in C.skimage_photos(["astronaut", "coffee"], size=64)])


def _png(images: torch.Tensor) -> torch.Tensor:
    return (images.clamp(0, 1) * 255).round() / 255  # what an 8-bit PNG keeps


def test_plus_one_ev_doubles_linear_light_on_unclipped_pixels(photos):
    lin_src, lin_edit = C.to_linear(photos), C.to_linear(C.exposure(photos, 1.0))
    unclipped = lin_src * 2 < 0.999
    assert unclipped.float().mean() > 0.5
    torch.testing.assert_close(lin_edit[unclipped], 2 * lin_src[unclipped], rtol=2e-5, atol=1e-6)
    assert torch.all(lin_edit[lin_src * 2 > 1.001] == 1.0)  # the rest clips at white


def test_hue_rotation_is_periodic(photos):
    torch.testing.assert_close(C.hue_rotation(photos, 360.0), photos, rtol=0, atol=2e-6)
    half = C.hue_rotation(photos, 180.0)
    assert (half - photos).abs().max() > 0.3  # a half turn really changes the colours
    torch.testing.assert_close(C.hue_rotation(half, 180.0), C.hue_rotation(photos, 360.0), rtol=0, atol=2e-6)
    torch.testing.assert_close(C.hue_rotation(photos, -90.0), C.hue_rotation(photos, 270.0), rtol=0, atol=2e-6)


BIT_EXACT_OPERATORS = {"contrast", "saturation", "gamma", "blur", "noise"}


@pytest.mark.parametrize("name", list(C.TASKS))
def test_identity_value_returns_the_input(photos, name):
    task = C.TASKS[name]
    raw = task.operator(photos, task.identity, 7)
    if name in BIT_EXACT_OPERATORS:
        assert torch.equal(raw, photos)
    else:  # a round trip through linear light or HSV: float rounding only
        torch.testing.assert_close(raw, photos, rtol=0, atol=1e-6)
    assert torch.equal(task.apply(photos, task.identity, 7), photos)  # frame 0 = the source, bit for bit
    assert not torch.equal(task.apply(photos, task.range[1], 7), photos)


def _high_frequency_energy(images: torch.Tensor) -> float:
    return float((images[..., 1:, :] - images[..., :-1, :]).pow(2).mean()
                 + (images[..., :, 1:] - images[..., :, :-1]).pow(2).mean())


def test_monotonic_effects(photos):
    energies = [_high_frequency_energy(C.gaussian_blur(photos, s)) for s in (0.0, 0.5, 1.0, 2.0, 4.0)]
    assert all(b < a for a, b in zip(energies, energies[1:])), energies
    grey = C.saturation(photos, 0.0)
    assert torch.equal(grey[:, 0], grey[:, 1]) and torch.equal(grey[:, 1], grey[:, 2])
    red_blue = [float(C.temperature(photos, k)[:, 0].mean() / C.temperature(photos, k)[:, 2].mean())
                for k in (10000.0, 6500.0, 5000.0, 3000.0, 2000.0)]
    assert all(b > a for a, b in zip(red_blue, red_blue[1:])), red_blue  # lower kelvin = redder
    assert C.blackbody_gains(6500.0) == (1.0, 1.0, 1.0)
    corners = [float(C.vignette(photos, v)[..., :4, :4].mean()) for v in (0.0, 0.4, 0.8)]
    assert corners[0] > corners[1] > corners[2]
    torch.testing.assert_close(C.vignette(photos, 0.8)[..., 31:33, 31:33], photos[..., 31:33, 31:33], rtol=0,
                               atol=2e-3)  # the centre keeps its light


# (values, absolute tolerance, relative tolerance), on 64 px photos stored as 8-bit PNG, at values inside and
# beyond the default ranges; the worst errors measured were 3-10x below these.
ESTIMATE_CASES = {
    "exposure": ([-1.0, 0.5, 1.0, 2.0], 0.01, 0),
    "contrast": ([0.5, 1.25, 1.5, 2.0], 0.01, 0),
    "saturation": ([0.0, 0.5, 1.5, 2.0], 0.002, 0),
    "hue": ([-60.0, 45.0, 90.0, 180.0], 0.1, 0),
    "gamma": ([0.6, 1.25, 1.5, 2.0], 0.005, 0),
    "temperature": ([9000.0, 5625.0, 4750.0, 3000.0], 0, 0.002),
    "blur": ([0.5, 1.0, 2.0, 4.0], 0.005, 0),
    "noise": ([0.01, 0.025, 0.05, 0.1], 0.005, 0),
    "vignette": ([0.2, 0.4, 0.8, 1.0], 0.002, 0),
}


@pytest.mark.parametrize("name", list(C.TASKS))
def test_estimate_value_recovers_the_applied_value(photos, name):
    assert set(ESTIMATE_CASES) == set(C.TASKS)
    task = C.TASKS[name]
    values, abs_tol, rel_tol = ESTIMATE_CASES[name]
    for value in [task.identity, *values]:
        edited = _png(task.apply(photos, value, seed=11))
        for i in range(len(photos)):
            estimate = task.estimate_value(photos[i], edited[i])
            assert estimate == pytest.approx(value, abs=abs_tol, rel=rel_tol), (value, i)


def test_exposure_estimate_is_not_pulled_down_by_a_soft_roll_off_near_white(photos):
    """A model rarely clips hard: it rolls off towards white. Those pixels must not count as unclipped."""
    lin = C.to_linear(photos) * 2 ** 1.5
    shoulder = torch.where(lin < 0.8, lin, 0.8 + 0.2 * torch.tanh((lin - 0.8) / 0.4))  # rolls off towards white
    edited = _png(C.to_srgb(shoulder))
    naive = [C.linear_gain(photos[i], edited[i]) for i in range(len(photos))]
    assert min(abs(torch.tensor(g).log2().item() - 1.5) for g in naive) > 0.1  # the plain measure is biased
    for i in range(len(photos)):
        assert C.TASKS["exposure"].estimate_value(photos[i], edited[i]) == pytest.approx(1.5, abs=0.02)


def test_kelvin_inversion_and_domain():
    for kelvin in (2000.0, 3000.0, 6500.0, 12000.0):
        r, _, b = C.blackbody_gains(kelvin)
        assert C.kelvin_from_red_blue(torch.tensor(r / b).log().item()) == pytest.approx(kelvin, rel=1e-6)
    with pytest.raises(ValueError, match="outside"):
        C.TASKS["temperature"].apply(torch.zeros(1, 3, 8, 8), 1000.0)
    with pytest.raises(ValueError, match="blur: value -1 px is outside"):
        C.TASKS["blur"].apply(torch.zeros(1, 3, 8, 8), -1.0)


def _cat_args(*argv: str) -> argparse.Namespace:
    return C.add_cat_arguments(argparse.ArgumentParser()).parse_args(list(argv))


def _read_png(path) -> torch.Tensor:
    with Image.open(path) as im:
        return torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)


def _tree(root) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_synthesis_is_deterministic_and_reads_back_exactly(tmp_path, capsys):
    common = ["--photos", "skimage:astronaut,coffee", "--tasks", "exposure,noise,temperature", "--frames", "5",
              "--size", "32", "--seed", "3", "--ranges", "exposure=-1:1"]
    assert C.run_cat(_cat_args("--out", str(tmp_path / "a"), *common)) == 0
    assert C.run_cat(_cat_args("--out", str(tmp_path / "b"), *common)) == 0
    assert "wrote 6 trajectories of 5 frames" in capsys.readouterr().out
    a, b = _tree(tmp_path / "a"), _tree(tmp_path / "b")
    assert a == b and len(a) == 1 + 6 * 6  # manifest + (source + 5 frames) per trajectory

    trajectories = {t.id: t for t in read_manifest(tmp_path / "a")}
    assert sorted(trajectories) == sorted(f"{t}/{p}" for t in ("exposure", "noise", "temperature")
                                          for p in ("astronaut", "coffee"))
    exposure = trajectories["exposure/coffee"]
    assert [f.strength for f in exposure.frames] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert [f.value for f in exposure.frames] == [-1.0, -0.5, 0.0, 0.5, 1.0]
    assert (exposure.task, exposure.unit, exposure.instruction) == ("exposure", "EV", "increase the exposure")
    warm = trajectories["temperature/astronaut"]
    assert [f.value for f in warm.frames] == [6500.0, 5625.0, 4750.0, 3875.0, 3000.0]
    assert warm.instruction == "make the colours warmer" and a[warm.frames[0].path] == a[warm.source]

    noisy = trajectories["noise/astronaut"]
    source = _read_png(tmp_path / "a" / noisy.source)
    seed = C.trajectory_seed(3, noisy.id)
    for frame in noisy.frames:  # each file is exactly the operator at the recorded value
        expected = C.TASKS["noise"].apply(source.unsqueeze(0), frame.value, seed)[0]
        assert torch.equal(_read_png(tmp_path / "a" / frame.path), _png(expected)), frame


def test_background_trajectories_walk_one_task_on_photos_carrying_the_others(tmp_path):
    """--background: each trajectory is still one task's edit, on a photo that carries the other tasks at
    frame-grid values, every frame the whole chain in the tasks' order; without it, the plain trajectories."""
    common = ["--photos", "skimage:astronaut,coffee,chelsea", "--tasks", "exposure,hue", "--frames", "5",
              "--size", "16", "--seed", "1"]
    assert C.run_cat(_cat_args("--out", str(tmp_path / "bg"), *common, "--background")) == 0
    assert C.run_cat(_cat_args("--out", str(tmp_path / "plain"), *common)) == 0
    photos = {p.name: p.image.unsqueeze(0) for p in C.skimage_photos(["astronaut", "coffee", "chelsea"], 16)}
    exposure, hue = C.TASKS["exposure"], C.TASKS["hue"]
    grid = {name: {C.TASKS[name].value_at(k / 4) for k in range(5)} for name in ("exposure", "hue")}
    seen = set()
    for t in read_manifest(tmp_path / "bg"):
        (other, value), = t.extra["background"].items()
        assert other != t.task and value in grid[other]
        seen.add(value)
        photo = photos[t.id.split("/")[1]]
        for frame in t.frames:  # exposure first, then hue, whichever task walks
            e, h = (frame.value, value) if t.task == "exposure" else (value, frame.value)
            expected = hue.apply(exposure.apply(photo, e), h)[0]
            assert torch.equal(_read_png(tmp_path / "bg" / frame.path), _png(expected)), (t.id, frame)
        assert torch.equal(_read_png(tmp_path / "bg" / t.source), _read_png(tmp_path / "bg" / t.frames[0].path))
    assert len(seen) > 1  # drawn per trajectory, not one state for all
    for t in read_manifest(tmp_path / "plain"):
        assert not t.extra
        assert torch.equal(_read_png(tmp_path / "plain" / t.source), _png(photos[t.id.split("/")[1]][0]))
    assert _tree(tmp_path / "bg") != _tree(tmp_path / "plain")


def test_extents_make_trajectories_stop_short_of_the_range(tmp_path, capsys):
    common = ["--photos", "skimage:astronaut,coffee,chelsea,rocket", "--tasks", "exposure,hue", "--frames", "5",
              "--size", "16", "--seed", "2"]
    assert C.run_cat(_cat_args("--out", str(tmp_path / "x"), *common, "--extents", "0.5,1")) == 0
    spans = set()
    for t in read_manifest(tmp_path / "x"):
        task = C.TASKS[t.task]
        extent = t.frames[-1].strength
        assert extent in (0.5, 1.0)
        spans.add(extent)
        assert [f.strength for f in t.frames] == [extent * k / 4 for k in range(5)]
        assert [f.value for f in t.frames] == [task.value_at(f.strength) for f in t.frames]
    assert spans == {0.5, 1.0}
    assert C.parse_extents("1/3, 2/3,1") == (1 / 3, 2 / 3, 1.0)  # fractions as the README writes them
    for bad in ("0", "1.5", "x", "", "1/0", "4/3"):
        assert C.run_cat(_cat_args("--out", str(tmp_path / "bad"), *common, "--extents", bad)) == 2
        assert "--extents takes comma-separated numbers or fractions in (0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_seeds_are_stable_across_processes_and_change_the_noise(tmp_path):
    assert C.trajectory_seed(0, "noise/astronaut") == 4628488839571081735  # not Python's per-process hash()
    assert C.trajectory_seed(1, "noise/astronaut") != C.trajectory_seed(0, "noise/astronaut")
    for seed in ("1", "2"):
        assert C.run_cat(_cat_args("--out", str(tmp_path / seed), "--photos", "skimage:chelsea", "--tasks",
                                   "noise,contrast", "--frames", "2", "--size", "16", "--seed", seed)) == 0
    one, two = _tree(tmp_path / "1"), _tree(tmp_path / "2")
    assert one["noise/chelsea/01.png"] != two["noise/chelsea/01.png"]
    assert one["contrast/chelsea/01.png"] == two["contrast/chelsea/01.png"]


def test_folder_photos_crop_resize_and_skip_unreadable(tmp_path, caplog, capsys):
    wide = Image.new("RGB", (48, 32), (0, 200, 0))
    for x0 in (0, 40):
        wide.paste((255, 0, 0), (x0, 0, x0 + 8, 32))  # red margins that the centre crop must drop
    wide.save(tmp_path / "wide.png")
    Image.new("L", (20, 20), 128).save(tmp_path / "grey.jpg")
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    (tmp_path / "notes.txt").write_text("ignored: not an image extension")
    with caplog.at_level(logging.WARNING, logger="kontext_sliders.trainer"):
        photos, skipped = C.folder_photos(tmp_path, size=16)
    assert [p.name for p in photos] == ["grey", "wide"] and skipped == ["broken.png"]
    assert "broken.png" in caplog.text
    wide16 = photos[1].image
    assert wide16.shape == (3, 16, 16) and wide16[0].max() < 0.1 and wide16[1].min() > 0.7

    args = _cat_args("--out", str(tmp_path / "out"), "--photos", str(tmp_path), "--tasks", "blur", "--frames", "3",
                     "--size", "16")
    assert C.run_cat(args) == 0
    assert "photos: 2 used, 1 skipped (broken.png)" in capsys.readouterr().out
    assert [t.id for t in read_manifest(tmp_path / "out")] == ["blur/grey", "blur/wide"]


def test_skimage_photos_are_square_colour_and_in_range():
    photos = C.skimage_photos(size=24)
    assert [p.name for p in photos] == list(C.SKIMAGE_PHOTOS)
    for p in photos:
        assert p.image.shape == (3, 24, 24) and 0 <= p.image.min() and p.image.max() <= 1
        assert (p.image[0] - p.image[2]).abs().max() > 0.05  # really colour
    with pytest.raises(ValueError, match="unknown scikit-image photo 'camera'; known: astronaut"):
        C.skimage_photos(["camera"])


def test_bad_input_gives_clear_errors(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"unknown CAT task 'expo'; known tasks: exposure, contrast, .*vignette"):
        C.get_task("expo")
    assert C.run_cat(_cat_args("--out", str(tmp_path), "--tasks", "exposure,expo")) == 2
    assert "unknown CAT task 'expo'; known tasks: exposure" in capsys.readouterr().err
    for ranges, message in (("exposure=1", "not of the form task=start:end"),
                            ("exposure=a:b", "not of the form"),
                            ("hue=0:90", "'hue', which is not among the tasks"),
                            ("temperature=100:3000", r"temperature: value 100 K is outside \[1667, 25000\]")):
        with pytest.raises(ValueError, match=message):
            C.select_tasks("exposure,temperature", ranges)
    assert C.run_cat(_cat_args("--out", str(tmp_path), "--photos", "skimage:astronaut", "--tasks", "exposure",
                               "--frames", "1", "--size", "16")) == 2
    assert "at least 2 frames" in capsys.readouterr().err
    assert C.run_cat(_cat_args("--out", str(tmp_path), "--photos", str(tmp_path / "missing"))) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "manifest.json").exists()


def test_instruction_follows_the_direction_of_the_range():
    temperature = C.TASKS["temperature"]
    assert temperature.instruction() == "make the colours warmer"
    assert temperature.with_range(6500, 9000).instruction() == "make the colours cooler"
    assert C.select_tasks("exposure", "exposure=0:-2")[0].instruction() == "decrease the exposure"
    assert [t.name for t in C.select_tasks("all")] == list(C.TASKS)


def test_saturation_is_signed_and_residual_chroma_sees_a_cast_the_factor_misses(photos):
    """At full desaturation a model may leave a cast (teal instead of grey): the factor, which looks along the
    source's own hues, reads it as ~0 ("grey"); the residual chroma shows it. An opposite hue reads negative."""
    task = C.TASKS["saturation"]
    for i in range(len(photos)):
        source = photos[i]
        grey = C.grey(source.unsqueeze(0))[0]
        chroma = source - grey
        cases = {  # name: (edited, factor, residual)
            "grey": (_png(task.apply(source, 0.0)), 0.0, 0.0),
            "half": (_png(task.apply(source, 0.5)), 0.5, 0.0),
            "opposite hue": (grey - 0.5 * chroma, -0.5, 0.0),  # same hues turned round: along, but negative
        }
        # a cast across the source's hues: orthogonal to its mean chroma and of zero luma (w . d = 0)
        w = torch.tensor([0.299, 0.587, 0.114])
        d = torch.linalg.cross(chroma.mean((1, 2)), w)
        d = d / d.norm() * 0.05
        cast = grey + d.view(3, 1, 1)
        rms_source = float(chroma.pow(2).mean().sqrt())
        cases["cast"] = (cast, 0.0, float(d.norm()) / 3 ** 0.5 / rms_source)
        for name, (edited, factor, residual) in cases.items():
            assert task.estimate_value(source, edited) == pytest.approx(factor, abs=0.02), (name, i)
            assert task.estimate_residual(source, edited) == pytest.approx(residual, abs=0.02), (name, i)
        assert cases["cast"][2] > 0.1  # clearly visible, yet the factor says "grey"
    assert C.TASKS["exposure"].estimate_residual(photos[0], photos[0]) is None  # tasks without such a measure
