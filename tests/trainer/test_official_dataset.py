"""The official Kontinuous Kontext dataset: reader, KL + v2 filters, report, export to trajectories, CLI."""
import argparse
import json
import math

import numpy as np
import pytest
from PIL import Image

from kontext_sliders.trainer.data import official as O
from kontext_sliders.trainer.data.trajectories import read_manifest

SIZE = 16
UNIFORM = [0.1] * 8                      # KL = 0
ONE_JUMP = [1.0] + [0.001] * 7           # nearly all change in one step: KL close to ln 8


def stack_pixels(seed: int, n: int = 9) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE * n, 3), dtype=np.uint8)


def record(name: str, category: str = "stylization", seq=UNIFORM, kontext_edit: float = 0.3,
           edit_inversion: float = 0.2, instruction: str = "make_it_snow", **more) -> dict:
    return {"image_name": f"{name}.png", "extended_image_name": f"{name}_ext.png", "category": category,
            "edit_instruction": instruction, "lpips_kontext_edit": kontext_edit,
            "lpips_edit_inversion": edit_inversion, "lpips_inversion_edit": 0.3, "lpips_sequence": list(seq),
            **more}


def write_dataset(root, records, frames: dict | None = None, json_name: str = "data.json") -> dict:
    """Records + one stack per named record (frame count from ``frames``, default 9); returns the pixels."""
    root.mkdir(parents=True, exist_ok=True)
    (root / json_name).write_text(json.dumps(records))
    pixels = {}
    for i, rec in enumerate(records):
        if not isinstance(rec, dict) or "image_name" not in rec:
            continue
        name = rec["image_name"].removesuffix(".png")
        n = (frames or {}).get(name, 9)
        if n is None:  # no stack on disk
            continue
        pixels[name] = stack_pixels(i, n)
        Image.fromarray(pixels[name]).save(root / O.stack_name(rec["image_name"]))
    return pixels


# ------------------------------------------------------------------------------------------------- KL

def test_kl_keeps_uniform_and_drops_one_jump():
    assert O.smoothness_kl(UNIFORM) == pytest.approx(0.0, abs=1e-12)
    assert O.passes_smoothness(UNIFORM)
    assert O.smoothness_kl(ONE_JUMP) > 1.5
    assert not O.passes_smoothness(ONE_JUMP)
    assert O.smoothness_kl([1.0] + [0.0] * 7) == pytest.approx(math.log(8))  # zero entries skipped


@pytest.mark.parametrize("seed", range(5))
def test_kl_is_ln8_minus_entropy(seed):
    d = np.random.default_rng(seed).uniform(0.01, 1.0, 8)
    d[seed % 8] = 0.0  # a zero entry contributes nothing to either side
    p = d / d.sum()
    entropy = -sum(x * math.log(x) for x in p if x > 0)
    assert O.smoothness_kl(d.tolist()) == pytest.approx(math.log(8) - entropy, rel=1e-12, abs=1e-12)


def test_kl_threshold_is_inclusive_and_configurable():
    d = [0.2, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]
    kl = O.smoothness_kl(d)
    assert O.passes_smoothness(d, kl) and not O.passes_smoothness(d, kl - 1e-9)
    assert O.KL_THRESHOLD == 0.15


@pytest.mark.parametrize("bad", [[0.0] * 8, [0.1, -0.1] + [0.1] * 6, [], [float("nan")] * 8])
def test_kl_refuses_unusable_distances(bad):
    with pytest.raises(ValueError):
        O.smoothness_kl(bad)


# ------------------------------------------------------------------------------------------------- v2

V2_DOC = [("stylization", 0.10, 0.55), ("environment_change", 0.10, 0.55), ("reimagining", 0.10, 0.52),
          ("appearance_change", 0.020, 0.50), ("material_change", 0.020, 0.50),
          ("attribute_change", 0.030, 0.45), ("object_morphing", 0.030, 0.45)]


@pytest.mark.parametrize("category,lo,hi", V2_DOC)
def test_v2_boundaries(category, lo, hi):
    eps = 1e-6
    assert O.passes_inversion_edit(category, lo, hi)                 # both exactly at the boundary: kept
    assert not O.passes_inversion_edit(category, lo - eps, hi)       # edit did too little
    assert not O.passes_inversion_edit(category, lo, hi + eps)       # inversion drifted too far
    assert O.passes_inversion_edit(category, lo + eps, hi - eps)


def test_v2_table_is_exactly_the_documented_one_and_unknown_categories_pass():
    assert {c: (t.min_kontext_edit, t.max_edit_inversion) for c, t in O.V2_THRESHOLDS.items()} == \
        {c: (lo, hi) for c, lo, hi in V2_DOC}
    assert O.passes_inversion_edit("lighting_change", 0.0, 10.0)
    strict = {"lighting_change": O.InversionEditThresholds(0.5, 0.5)}
    assert not O.passes_inversion_edit("lighting_change", 0.4, 0.4, strict)


# --------------------------------------------------------------------------------------- report, modes

def mixed_records() -> list[dict]:
    return [record("good"),
            record("jumpy", seq=ONE_JUMP),                                         # smoothness only
            record("weak", kontext_edit=0.05),                                     # v2 only
            record("both", seq=ONE_JUMP, edit_inversion=0.9),                      # both filters
            record("other", category="lighting_change", kontext_edit=0.0, edit_inversion=0.9)]  # not in table


def test_report_counts_per_mode(tmp_path):
    write_dataset(tmp_path, mixed_records())
    data = O.read_official(tmp_path)
    rep = O.filter_report(data)
    assert rep.removed == {O.SMOOTHNESS: 2, O.INVERSION_EDIT: 2}   # "both" is in both columns
    assert rep.removed_either == 3
    assert [r.id for r in rep.kept] == ["good", "other"]

    simple = O.filter_report(data, "simple-filter")
    assert simple.removed == {O.SMOOTHNESS: None, O.INVERSION_EDIT: 2}
    assert [r.id for r in simple.kept] == ["good", "jumpy", "other"]
    assert len(O.filter_report(data, "no-filter").kept) == 5
    assert [r.id for r in O.filter_report(data, kl_threshold=10.0).kept] == ["good", "jumpy", "other"]
    with pytest.raises(ValueError):
        O.filter_report(data, "second-order-lpips-simple")


def test_report_table_text(tmp_path):
    write_dataset(tmp_path, mixed_records() + [record("lost")], frames={"lost": None})
    text = O.filter_report(O.read_official(tmp_path)).format()
    rows = {line.rsplit(None, 1)[0].strip(): line.rsplit(None, 1)[1] for line in text.splitlines()[1:]}
    assert rows == {"records in JSON": "6", "skipped (bad)": "1", O.STACK_MISSING: "1",
                    "removed: smoothness (KL > 0.15)": "2", "removed: inversion/edit (v2)": "2",
                    "removed: either": "3", "kept": "2"}
    assert "off" in O.filter_report(O.read_official(tmp_path), "no-filter").format()


# ---------------------------------------------------------------------------------------- bad records

def test_bad_records_are_skipped_and_counted(tmp_path):
    no_seq = record("no_seq")
    del no_seq["lpips_sequence"]
    records = [record("ok"),                                    # no lpips_sequence_triangle: still fine
               record("nostack"), record("five"), no_seq, "not a record",
               record("short", seq=[0.1] * 7), record("zeros", seq=[0.0] * 8), record("ok"),
               record("junk"), record("blank", instruction="")]
    write_dataset(tmp_path, records, frames={"nostack": None, "five": 5})
    (tmp_path / O.stack_name("junk.png")).write_bytes(b"not a png")
    data = O.read_official(tmp_path)
    assert [r.id for r in data.records] == ["ok"]
    assert data.total == len(records)
    assert data.skipped == {O.STACK_MISSING: 1, O.WRONG_FRAME_COUNT: 1, "missing field: lpips_sequence": 1,
                            O.NOT_AN_OBJECT: 1, "bad field: lpips_sequence": 2, O.DUPLICATE: 1,
                            O.STACK_UNREADABLE: 1, "bad field: edit_instruction": 1}


def test_truncated_stack_is_caught_when_decoding(tmp_path):
    write_dataset(tmp_path, [record("cut")])
    path = tmp_path / O.stack_name("cut.png")
    path.write_bytes(path.read_bytes()[:-200])  # the header still parses
    assert len(O.read_official(tmp_path).records) == 1
    data = O.read_official(tmp_path, decode=True)
    assert data.records == [] and data.skipped == {O.STACK_UNREADABLE: 1}


def test_json_file_choice(tmp_path):
    with pytest.raises(O.OfficialDatasetError, match="exactly one"):
        O.read_official(tmp_path)
    write_dataset(tmp_path, [record("a")])
    write_dataset(tmp_path, [record("b"), record("c")], json_name="more.json")
    with pytest.raises(O.OfficialDatasetError, match="data.json, more.json"):
        O.read_official(tmp_path)
    assert O.read_official(tmp_path, "more.json").total == 2
    (tmp_path / "broken.json").write_text("[{")
    with pytest.raises(O.OfficialDatasetError, match="not valid JSON"):
        O.read_official(tmp_path, tmp_path / "broken.json")


# --------------------------------------------------------------------------------------------- export

def test_export_frames_are_stack_crops_with_strengths(tmp_path):
    pixels = write_dataset(tmp_path / "data", [record("a"), record("b", category="reimagining", instruction="add fog")])
    data = O.read_official(tmp_path / "data", decode=True)
    O.export_trajectories(data.records, tmp_path / "out")
    trajs = read_manifest(tmp_path / "out")
    assert [t.id for t in trajs] == ["a", "b"]
    for t in trajs:
        stack = pixels[t.id]
        assert [f.strength for f in t.frames] == [k / 6 for k in range(7)]
        assert all(f.value is None for f in t.frames)
        assert t.source == t.frames[0].path  # source = frame 1 (the inverted source) = strength 0
        for k, f in enumerate(t.frames):
            crop = stack[:, (1 + k) * SIZE:(2 + k) * SIZE]
            assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / f.path)), crop)
    a, b = trajs
    assert (a.instruction, a.task, b.instruction, b.task) == ("make_it_snow", "stylization", "add fog", "reimagining")
    assert a.extra["lpips_sequence"] == UNIFORM and a.extra["lpips_kontext_edit"] == 0.3
    assert a.extra["smoothness_kl"] == pytest.approx(0.0, abs=1e-12)
    assert "edit_instruction" not in a.extra


def test_export_underscores_to_spaces_keeps_verbatim_in_extra(tmp_path):
    write_dataset(tmp_path / "data", [record("a", instruction="make_it_snow")])
    O.export_trajectories(O.read_official(tmp_path / "data").records, tmp_path / "out", underscores_to_spaces=True)
    (t,) = read_manifest(tmp_path / "out")
    assert t.instruction == "make it snow"
    assert t.extra["edit_instruction"] == "make_it_snow"


def test_export_paths_stay_inside_and_unique(tmp_path):
    write_dataset(tmp_path / "data", [record("x y"), record("x_y")])
    trajs = O.export_trajectories(O.read_official(tmp_path / "data").records, tmp_path / "out")
    dirs = {t.frames[0].path.rsplit("/", 1)[0] for t in trajs}
    assert len(dirs) == 2 and all(".." not in d and " " not in d for d in dirs)
    assert len(read_manifest(tmp_path / "out")) == 2


# ------------------------------------------------------------------------------------------------ CLI

def cli(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    O.add_filter_arguments(parser)
    return parser.parse_args(list(argv))


def test_run_filter_prints_report_and_writes_folder(tmp_path, capsys):
    write_dataset(tmp_path / "data", mixed_records())
    args = cli("--data", str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--underscores-to-spaces")
    assert (args.filter, args.kl_threshold, args.json) == ("kl-filter-simple", 0.15, None)
    assert O.run_filter(args) == 0
    out = capsys.readouterr().out
    assert "removed: either" in out and "wrote 2 trajectories" in out
    trajs = read_manifest(tmp_path / "out")
    assert [t.id for t in trajs] == ["good", "other"]
    assert trajs[0].instruction == "make it snow"
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert (manifest["filter"], manifest["kl_threshold"]) == ("kl-filter-simple", 0.15)


def test_run_filter_report_only_and_modes(tmp_path, capsys):
    write_dataset(tmp_path / "data", mixed_records())
    assert O.run_filter(cli("--data", str(tmp_path / "data"), "--filter", "no-filter")) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1].split() == ["kept", "5"]
    assert not (tmp_path / "data" / "manifest.json").exists()


def test_run_filter_unreadable_dataset_exits_2(tmp_path, capsys):
    assert O.run_filter(cli("--data", str(tmp_path))) == 2
    assert "error:" in capsys.readouterr().err
