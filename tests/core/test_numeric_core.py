"""NumeriKontrol core (issue 13): registry, parser, adapter, mask, weight header and the parse command."""
from __future__ import annotations

import copy
import json
import math
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from kontext_sliders.core.weights_io import METADATA_KEY, WeightsFormatError
from kontext_sliders.core.numeric import (DEFAULT_REGISTRY, DEFAULT_REGISTRY_DATA, AdapterConfig, NumericAdapter,
                                          NumericEdit, NumericParseError, Registry, RegistryError, featurize,
                                          multi_numeric_mask, numeric_metadata, parse_line, read_numeric_header)
from kontext_sliders.core.numeric.__main__ import main as cli_main

REG = DEFAULT_REGISTRY
TINY = AdapterConfig(encoder_width=32, embed_width=32, decoder_width=32, out_dim=16)

# ---------------------------------------------------------------- the parser

VALID = [
    ("Increase the exposure by 1.5 EV", "exposure", 1.5),
    ("decrease the colour temperature by 800 K", "temperature", -800.0),
    ("exposure +1.5EV", "exposure", 1.5),
    ("rotate the hue by -30 degrees", "hue", -30.0),
    ("Hue: +45°", "hue", 45.0),
    ("Decrease the exposure by 1 stop", "exposure", -1.0),
    ("lower the exposure by 0.5 stops", "exposure", -0.5),
    ("EXPOSURE -2 ev", "exposure", -2.0),
    ("darken the image by 1 EV", "exposure", -1.0),  # no task named: EV belongs to exposure only
    ("+1.5 EV", "exposure", 1.5),
    ("exposure-1EV", "exposure", -1.0),
    ("Increase the exposure by 0 EV", "exposure", 0.0),
    ("increase the exposure by 1.5 EV, please", "exposure", 1.5),
    ("Increase the exposure by 2 EV.", "exposure", 2.0),
    ("increase the exposure by 1.5 for the sky", "exposure", 1.5),  # no unit: the canonical one
    ("increase the color temperature by 1,000 kelvin", "temperature", 1000.0),
    ("make the colours warmer by 500K", "temperature", -500.0),
    ("Temperature: -3500 K", "temperature", -3500.0),
    ("Increase the contrast by 1.5x", "contrast", 1.5),
    ("decrease the contrast by 2x", "contrast", 0.5),
    ("contrast ×1.25", "contrast", 1.25),
    ("contrast x0.5", "contrast", 0.5),
    ("boost the saturation by 2 times", "saturation", 2.0),
    ("reduce the colour saturation by 1.25×", "saturation", 0.8),
    ("saturation 0.75X", "saturation", 0.75),
    ("rotate the hue by 30°", "hue", 30.0),
    ("shift the hue by 90 deg", "hue", 90.0),
    ("rotate by -15 degree", "hue", -15.0),
    ("the hue, rotated by 180 degrees", "hue", 180.0),
    ("increase the gamma by 0.5", "gamma", 0.5),
    ("gamma -0.25", "gamma", -0.25),
    ("blur the image by 2 px", "blur", 2.0),
    ("sharpen by 1.5 pixels", "blur", -1.5),
    ("Gaussian blur +.5px", "blur", 0.5),
    ("add noise by 0.05", "noise", 0.05),
    ("remove noise 0.02", "noise", -0.02),
    ("increase the vignette by 0.4", "vignette", 0.4),
    ("vignetting -0.8", "vignette", -0.8),
    # thirds and halves of a stop, as photographers write them: fractions, vulgar fractions, mixed numbers
    ("+1/3 EV", "exposure", 1 / 3),
    ("-2/3 stop", "exposure", -2 / 3),
    ("½ EV", "exposure", 0.5),
    ("raise the exposure by 1 1/2 stops", "exposure", 1.5),
    ("exposure -1⅓ EV", "exposure", -4 / 3),
    ("decrease the exposure by ⅔ stop", "exposure", -2 / 3),
    ("blur 2½ px", "blur", 2.5),
    # percent on factor tasks: a change of the factor
    ("saturation +30%", "saturation", 1.3),
    ("decrease the saturation by 30%", "saturation", 0.7),
    ("saturation -30 %", "saturation", 0.7),
    ("increase the contrast by 50%", "contrast", 1.5),
]

MALFORMED = [  # (line, what the message must say)
    ("", "empty"),
    ("increase the exposure", "no number"),
    ("increase the exposure by one stop", "no number"),
    ("increase the exposure by 1.5 EV and the contrast by 2x", "2 numbers (1.5, 2)"),
    ("exposure 1 EV 2 EV", "2 numbers"),
    ("increase the exposure by 1,5 EV", "',5' is not a number"),
    ("exposure 1.5.2 EV", "'.2' is not a number"),
    ("increase the exposure by 1.5 dB", "unknown unit 'dB' for exposure"),
    ("increase the exposure by 1.5 steps", "unknown unit 'steps'"),
    ("increase the hue by 30 px", "unknown unit 'px' for hue in '30 px' (it is a unit of blur)"),
    ("exposure x2", "unknown unit 'x' for exposure"),
    ("increase the gamma by 0.5 EV", "gamma takes a plain number"),
    ("increase the brightness by 1.5", "names no task (found '1.5')"),
    ("increase by 2x", "fits contrast, saturation"),
    ("increase the exposure and the contrast by 1.5", "names 2 tasks (exposure, contrast)"),
    ("exposure +3 EV", "exposure +3 EV (from '+3 EV') is outside"),
    ("rotate the hue by 270 degrees", "outside"),
    ("increase the contrast by 3x", "contrast 3x (from '3x') is outside"),
    ("decrease the contrast by 4x", "contrast 0.25x (from '4x') is outside"),
    ("increase the exposure by -1 EV", "opposite sign: ambiguous"),
    ("decrease the exposure by -1 EV", "has a sign as well: ambiguous"),  # refused alike, whichever way round
    ("increase the exposure by +1 EV", "has a sign as well: ambiguous"),
    ("raise and lower the exposure by 1 EV", "both increase wording ('raise') and decrease wording ('lower')"),
    ("increase the contrast by 0.5x", "ambiguous"),
    ("contrast -2x", "never negative"),
    ("contrast 0x", "factor of 0"),
    ("contrast x2x", "two units"),
    ("exposure 1/0 EV", "'1/0' divides by zero"),
    ("exposure 1/2/3 EV", "'1/2/3' is not a number"),
    ("exposure +30%", "percent changes a factor, but exposure is changed by adding (its unit is EV)"),
    ("saturation -100%", "leaves a factor of 0"),
]


def test_at_least_forty_phrasings_a_third_malformed():
    assert len(VALID) + len(MALFORMED) >= 40 and len(MALFORMED) * 3 >= len(VALID) + len(MALFORMED)


@pytest.mark.parametrize("line,task,delta", VALID)
def test_parse_valid(line, task, delta):
    edit = parse_line(line)
    assert edit == NumericEdit(task, pytest.approx(delta, rel=1e-12), REG.task(task).unit)
    assert math.copysign(1, edit.delta) > 0 or edit.delta < 0  # never -0.0


@pytest.mark.parametrize("line,message", MALFORMED)
def test_parse_malformed(line, message):
    with pytest.raises(NumericParseError) as info:
        parse_line(line)
    text = str(info.value)
    assert message in text
    # what is accepted: the whole registry, or the task the line named (with its units and range)
    assert f"accepted: {REG.describe()}" in text or any(text.endswith(t.describe()) for t in REG.tasks)


def test_error_lists_units_and_ranges():
    with pytest.raises(NumericParseError) as info:
        parse_line("increase the sharpness by 2")
    text = str(info.value)
    for fragment in ("exposure -2 ... 2 EV (units: EV, stop, stops)",
                     "contrast factor 0.5x ... 2x (units: x, ×, times)",
                     "hue -180 ... 180 deg (units: deg, °, degree, degrees)", "gamma -1 ... 1 (a plain number)",
                     "temperature -3500 ... 3500 K"):
        assert fragment in text


@pytest.mark.parametrize("task", REG.names)
def test_template_round_trip(task):
    """render(delta) reads back to (task, delta) over the whole range, for every task."""
    t = REG.task(task)
    lo, hi = t.delta_range
    if t.scale == "log":
        values = [math.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * k / 40) for k in range(41)]
    else:
        values = [lo + (hi - lo) * k / 40 for k in range(41)]
    values += [t.identity, lo, hi, 0.7 if t.scale == "log" else hi / 3, 1.3 if t.scale == "log" else lo / 7]
    for delta in values:
        line = t.render(delta)
        assert "{" not in line and line[0].isupper()
        edit = parse_line(line)
        assert edit.task == task and edit.delta == pytest.approx(delta, rel=1e-12, abs=1e-12), line


def test_rendered_wording():
    assert REG.task("exposure").render(-1.5) == "Decrease the exposure by 1.5 EV"
    assert REG.task("contrast").render(0.5) == "Decrease the contrast by 2x"
    assert REG.task("saturation").render(1.5) == "Increase the saturation by 1.5x"
    assert REG.task("temperature").render(-800) == "Decrease the colour temperature by 800 K"
    assert REG.task("noise").render(0.00001) == "Increase the noise by 0.00001"  # no exponent
    # no change reads either way (the trainer words half of its no-change pairs as a decrease)
    assert REG.task("exposure").render(0.0) == "Increase the exposure by 0 EV"
    assert REG.task("exposure").render(0.0, decrease=True) == "Decrease the exposure by 0 EV"
    assert REG.task("contrast").render(1.0, decrease=True) == "Decrease the contrast by 1x"
    for task, none in (("exposure", 0.0), ("contrast", 1.0), ("hue", 0.0)):
        edit = parse_line(REG.task(task).render(none, decrease=True))
        assert (edit.task, edit.delta) == (task, none)
    assert REG.task("exposure").render(-0.5, decrease=True) == "Decrease the exposure by 0.5 EV"
    with pytest.raises(ValueError, match="exposure: 0.5 is an increase; only no change may be worded as a decrease"):
        REG.task("exposure").render(0.5, decrease=True)


def test_factor_deltas_and_normalisation():
    contrast = REG.task("contrast")
    assert contrast.identity == 1.0 and contrast.compose(1.5, parse_line("decrease the contrast by 2x").delta) == 0.75
    assert contrast.normalise(2.0) == pytest.approx(1.0) and contrast.normalise(0.5) == pytest.approx(-1.0)
    exposure = REG.task("exposure")
    assert exposure.normalise(-1.0) == -0.5 and exposure.delta_between(0.5, 2.0) == 1.5


# ---------------------------------------------------------------- the registry

def test_registry_json_round_trip():
    data = REG.to_json()
    assert Registry.from_json(data) == REG
    assert Registry.from_json(REG.to_json_text()) == REG
    assert Registry.from_json(json.loads(json.dumps(DEFAULT_REGISTRY_DATA))) == REG
    assert REG.task_id("temperature") == 5 and REG.task("hue").unit == "deg"


def _edit(mutate):
    data = copy.deepcopy(REG.to_json())
    mutate(data)
    return data


def _task(data, name):
    return next(t for t in data["tasks"] if t["name"] == name)


BAD_REGISTRIES = [
    (lambda d: d.update(format="other"), "format is 'other'"),
    (lambda d: d.update(version=2), "version 2 is not supported"),
    (lambda d: d.update(tasks=[]), "non-empty list"),
    (lambda d: d["tasks"].append("exposure"), "registry task 9 is a JSON str"),
    (lambda d: _task(d, "hue").pop("template"), "registry task 3 ('hue'): missing template"),
    (lambda d: _task(d, "hue").update(unitz=["deg"]), "unknown field(s) unitz"),
    (lambda d: _task(d, "blur").update(delta_range=[1, 4]), "lo <= 0 <= hi"),
    (lambda d: _task(d, "contrast").update(delta_range=[0, 2]), "0 < lo <= 1 <= hi"),
    (lambda d: _task(d, "gamma").update(delta_range="wide"), "two finite numbers"),
    (lambda d: _task(d, "gamma").update(delta_range=[-1, float("nan")]), "two finite numbers"),
    (lambda d: _task(d, "gamma").update(scale="quadratic"), "scale must be one of linear, log"),
    (lambda d: _task(d, "saturation").update(names=["colour temperature"]), "given to both"),
    (lambda d: _task(d, "exposure").update(template="{verb} the exposure"), "{amount}"),
    (lambda d: _task(d, "exposure").update(template="{verb} the exposure by {amount} {unit}"), "placeholder"),
    (lambda d: _task(d, "exposure").update(template="{verb} the exposure by {amount} px"), "does not read back"),
    (lambda d: _task(d, "exposure").update(template="{verb} the contrast by {amount}"), "reads back as contrast"),
    (lambda d: _task(d, "exposure").update(unit="f"), "canonical unit 'f'"),
    (lambda d: _task(d, "exposure").update(decrease=["raise"]), "both increase and decrease"),
    (lambda d: _task(d, "exposure").update(units="EV"), "units must be a list of strings"),
    (lambda d: _task(d, "exposure").update(name="exposure 2"), "one word of letters"),
]


@pytest.mark.parametrize("mutate,message", BAD_REGISTRIES)
def test_registry_validation(mutate, message):
    with pytest.raises(RegistryError) as info:
        Registry.from_json(_edit(mutate))
    assert message in str(info.value)


def test_registry_not_json():
    with pytest.raises(RegistryError, match="not valid JSON"):
        Registry.from_json("{tasks")
    with pytest.raises(RegistryError, match="unknown task 'sharpness'; the registry has: exposure, contrast"):
        REG.task("sharpness")


ROTATION = {"format": "numerikontrol-registry", "version": 1, "tasks": [
    {"name": "rotation", "unit": "deg", "units": ["deg", "°", "degrees"], "delta_range": [-90, 90],
     "template": "{verb} the object by {amount} degrees", "names": ["object"], "increase": ["increase"],
     "decrease": ["decrease"]}]}


def test_custom_registry_is_what_parses():
    reg = Registry.from_json(ROTATION)
    assert parse_line("Rotate the object by -30 degrees", reg) == NumericEdit("rotation", -30.0, "deg")
    assert parse_line("rotate by 45°", reg).task == "rotation"
    with pytest.raises(NumericParseError, match=r"accepted: rotation -90 \.\.\. 90 deg"):
        parse_line("Increase the exposure by 1 EV", reg)


def test_default_registry_agrees_with_synth_cat():
    """Names and order (= task ids), units, delta conventions and ranges: exactly the deltas between frames of
    a default `synth cat` trajectory, in the way cat's operators compose."""
    from kontext_sliders.trainer.data.cat import TASKS
    assert REG.names == tuple(TASKS)
    for name, cat in TASKS.items():
        task = REG.task(name)
        if task.units:
            assert task.unit == cat.unit
        else:
            assert name in ("gamma", "noise", "vignette")
        assert (task.scale == "log") == (cat.unit == "x")  # contrast and saturation scale distances from grey
        values = [cat.value_at(k / 8) for k in range(9)]
        deltas = [task.delta_between(a, b) for a in values for b in values]
        assert (min(deltas), max(deltas)) == pytest.approx(task.delta_range, rel=1e-12)
        for a in values:
            for b in values:
                assert task.compose(a, task.delta_between(a, b)) == pytest.approx(b, rel=1e-12)


def test_multiplicative_convention_matches_cat_operators():
    """'increase the contrast by 1.5x' from factor a is cat's operator at 1.5 a (same image)."""
    from kontext_sliders.trainer.data.cat import TASKS
    image = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.25
    for name in ("contrast", "saturation"):
        cat, task = TASKS[name], REG.task(name)
        delta = parse_line(f"increase the {name} by 1.5x").delta
        once = cat.operator(cat.operator(image, 1.2, 0), delta, 0)  # factor 1.2, then the delta on top
        assert torch.allclose(once, cat.operator(image, task.compose(1.2, delta), 0), atol=1e-6)


# ---------------------------------------------------------------- the adapter

def test_adapter_default_sizes_are_the_papers():
    adapter = NumericAdapter(REG)
    shapes = {k: tuple(v.shape) for k, v in adapter.state_dict().items()}
    assert shapes == {"encoder.0.weight": (256, 7), "encoder.0.bias": (256,), "encoder.2.weight": (256, 256),
                      "encoder.2.bias": (256,), "task_embedding.weight": (9, 256), "decoder.1.weight": (256, 256),
                      "decoder.1.bias": (256,), "decoder.3.weight": (4096, 256), "decoder.3.bias": (4096,)}
    with pytest.raises(ValueError, match="out_dim must be a positive integer"):
        AdapterConfig(out_dim=0)


def test_featurize():
    u = torch.tensor([0.0, 0.5, -1.0], dtype=torch.float64)
    f = featurize(u, 3)
    assert f.shape == (3, 7) and torch.equal(f[:, 0], u)
    assert torch.allclose(f[0], torch.tensor([0.0, 0, 0, 0, 1, 1, 1], dtype=torch.float64))
    assert torch.allclose(f[1, 1:4], torch.tensor([math.sin(math.pi / 4), 1.0, 0.0], dtype=torch.float64), atol=1e-12)


def test_adapter_normalises_per_task_like_the_registry():
    adapter = NumericAdapter(REG, TINY)
    ids, deltas = [], []
    for i, t in enumerate(REG.tasks):
        lo, hi = t.delta_range
        for d in (lo, hi, t.identity, (lo + t.identity) / 2):
            ids.append(i)
            deltas.append(d)
    u = adapter.normalise(torch.tensor(ids), torch.tensor(deltas, dtype=torch.float64))
    assert torch.allclose(u, torch.tensor([REG.tasks[i].normalise(d) for i, d in zip(ids, deltas)],
                                          dtype=torch.float64), atol=1e-12)
    assert float(u.abs().max()) == pytest.approx(1.0)


def _grid(task, n):
    """n deltas evenly spaced in the task's signed coordinate, from one end of its range to the other."""
    log, scale = task.normaliser()
    lo, hi = (math.log(v) if log else v for v in task.delta_range)
    u = torch.linspace(lo / scale, hi / scale, n, dtype=torch.float64)
    return (u * scale).exp() if log else u * scale


def test_adapter_is_lipschitz_in_n():
    """Consecutive tokens on a fine grid differ by at most the network's Lipschitz bound times the step:
    continuous in n (a jump in the featurisation or the normalisation breaks it)."""
    torch.manual_seed(0)
    adapter = NumericAdapter(REG, TINY).double()
    silu = 1.0999  # SiLU's largest slope
    net = silu ** 3 * math.prod(float(torch.linalg.matrix_norm(m.weight.detach(), 2)) for m in adapter.modules()
                                if isinstance(m, torch.nn.Linear))
    feat = math.sqrt(1 + sum(((math.pi / 2) * 2 ** k) ** 2 for k in range(TINY.frequencies)))
    with torch.no_grad():
        for i, task in enumerate(REG.tasks):
            deltas = _grid(task, 2001)
            u = adapter.normalise(torch.full_like(deltas, i, dtype=torch.long), deltas)
            z = adapter(torch.full((2001,), i), deltas)
            steps = (z[1:] - z[:-1]).norm(dim=1)
            assert bool((steps <= net * feat * (u[1:] - u[:-1]).abs() * (1 + 1e-9)).all()), task.name
            assert float(steps.max()) < 0.02 * float((z - z[0]).norm(dim=1).max())  # no jump


def test_adapter_interpolates_between_trained_values():
    """Trained deltas of a 9-frame trajectory are 1/8 of the range apart (0.125 in u); the token halfway
    between two neighbours is closer to each than they are to each other, and near their chord's middle."""
    for seed in range(3):
        torch.manual_seed(seed)
        adapter = NumericAdapter(REG, TINY).double()
        with torch.no_grad():
            for i, task in enumerate(REG.tasks):
                z = adapter(torch.full((33,), i), _grid(task, 33))
                for k in range(0, 31, 2):
                    a, m, b = z[k], z[k + 1], z[k + 2]
                    span = float((a - b).norm())
                    assert float((m - a).norm()) < span and float((m - b).norm()) < span
                    assert float((m - (a + b) / 2).norm()) < 0.4 * span, (seed, task.name, k)


def test_tasks_separate_equal_numbers_and_tokens_follow_edits():
    torch.manual_seed(0)
    adapter = NumericAdapter(REG, TINY)
    edits = [parse_line("increase the gamma by 0.5"), parse_line("increase the vignette by 0.5"),
             parse_line("Increase the exposure by 1.5 EV")]
    tokens = adapter.tokens(edits)
    assert tokens.shape == (3, 16)
    assert not torch.allclose(tokens[0], tokens[1])
    ids = torch.tensor([REG.task_id(e.task) for e in edits])
    assert torch.equal(tokens, adapter(ids, torch.tensor([0.5, 0.5, 1.5])))
    far = adapter(torch.tensor([0]), torch.tensor([8.0]))  # past the range: extrapolates, finite
    assert bool(torch.isfinite(far).all())
    half = NumericAdapter(REG, TINY).to(torch.bfloat16)(ids, torch.tensor([0.5, 0.5, 1.5]))
    assert half.dtype == torch.bfloat16


# ---------------------------------------------------------------- the multi-numeric mask

def test_mask_layout():
    mask = multi_numeric_mask(3, 4, 5)
    assert mask.shape == (12, 12) and mask.dtype == torch.bool
    blocked = {(i, j) for i in range(12) for j in range(12) if not mask[i, j]}
    assert blocked == {(i, j) for i in range(3) for j in range(3) if i != j}
    additive = multi_numeric_mask(3, 4, 5, additive=True, dtype=torch.float16)
    assert additive.dtype == torch.float16 and bool((additive == 0).eq(mask).all())
    assert bool(torch.isinf(additive[0, 1])) and float(additive[0, 1]) < 0
    assert bool(multi_numeric_mask(1, 2, 2).all()) and multi_numeric_mask(0, 0, 0).shape == (0, 0)
    with pytest.raises(ValueError, match="numeric must be a token count"):
        multi_numeric_mask(-1, 2, 2)


def test_mask_keeps_numeric_tokens_independent():
    """Through attention with the mask, numeric token 0's output does not depend on numeric token 1 (it does
    without the mask); text and image outputs still do."""
    g = torch.Generator().manual_seed(0)
    m, text, image, d = 2, 3, 4, 8
    q, k, v = (torch.randn(1, 1, m + text + image, d, generator=g) for _ in range(3))
    k2, v2 = k.clone(), v.clone()
    k2[..., 1, :] += 1.0
    v2[..., 1, :] -= 2.0
    mask = multi_numeric_mask(m, text, image)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    out, out2 = sdpa(q, k, v, attn_mask=mask), sdpa(q, k2, v2, attn_mask=mask)
    assert torch.equal(out[..., 0, :], out2[..., 0, :])
    assert not torch.allclose(out[..., m:, :], out2[..., m:, :])
    assert not torch.allclose(sdpa(q, k, v)[..., 0, :], sdpa(q, k2, v2)[..., 0, :])
    additive = sdpa(q, k, v, attn_mask=multi_numeric_mask(m, text, image, additive=True))
    assert torch.allclose(additive, out, atol=1e-6)


# ---------------------------------------------------------------- the weight header

def _weights(path, registry=REG, config=TINY, metadata=None):
    state = {f"numeric_adapter.{k}": v.contiguous() for k, v in NumericAdapter(registry, config).state_dict().items()}
    save_file(state, str(path), metadata=metadata or numeric_metadata(registry, config))
    return path


def test_weight_header_round_trip(tmp_path):
    reg = Registry.from_json(ROTATION)
    header = read_numeric_header(_weights(tmp_path / "n.safetensors", reg))
    assert header.registry == reg and header.adapter == TINY


def _header(**change):
    info = json.loads(numeric_metadata(REG, TINY)[METADATA_KEY])
    info.update(change)
    return {"format": "pt", METADATA_KEY: json.dumps(info)}


BAD_FILES = [
    ("missing", "does not exist"),
    ("garbage", "is not a readable safetensors file"),
    ("empty", "is not a readable safetensors file"),
    ("no header", "has no 'kontext_sliders' header"),
    ("other format", "is a 'kontinuous-kontext' file, not a NumeriKontrol weight file"),
    ("not json", "is not valid JSON"),
    ("version", "has version 7"),
    ("bad registry", "unusable task registry (registry task 0 ('exposure'): delta_range"),
    ("bad adapter", "unusable adapter config (adapter config has unknown field(s) width"),
]


def _bad_file(tmp_path, kind):
    path = tmp_path / "bad.safetensors"
    registry = copy.deepcopy(REG.to_json())
    registry["tasks"][0]["delta_range"] = [3, 4]
    metadata = {"no header": {"format": "pt"},
                "other format": {"format": "pt", METADATA_KEY: json.dumps({"format": "kontinuous-kontext"})},
                "not json": {"format": "pt", METADATA_KEY: "{oops"},
                "version": _header(version=7), "bad registry": _header(registry=registry),
                "bad adapter": _header(adapter={"width": 3})}.get(kind)
    if metadata:
        _weights(path, metadata=metadata)
    elif kind == "garbage":
        path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header at all")
    elif kind == "empty":
        path.write_bytes(b"")
    return path


@pytest.mark.parametrize("kind,message", BAD_FILES)
def test_weight_header_errors(tmp_path, kind, message):
    with pytest.raises(WeightsFormatError) as info:
        read_numeric_header(_bad_file(tmp_path, kind))
    assert message in str(info.value)


# ---------------------------------------------------------------- the parse command

def _lines(text):
    return [json.loads(line) for line in text.splitlines()]


def test_cli_default_registry(capsys):
    assert cli_main(["parse", "Increase the exposure by 1.5 EV", "Hue: +45°"]) == 0
    out = capsys.readouterr().out
    assert _lines(out) == [{"line": "Increase the exposure by 1.5 EV", "task": "exposure", "delta": 1.5, "unit": "EV",
                            "canonical": "exposure +1.5 EV"},
                           {"line": "Hue: +45°", "task": "hue", "delta": 45.0, "unit": "deg", "canonical": "hue +45 deg"}]


def test_cli_failed_line_exits_2(capsys):
    assert cli_main(["parse", "exposure +1EV", "exposure +3 EV", "contrast x2"]) == 2
    rows = _lines(capsys.readouterr().out)
    assert [("error" in r) for r in rows] == [False, True, False] and rows[1]["line"] == "exposure +3 EV"
    assert "outside the accepted range" in rows[1]["error"]


def test_cli_weights_registry(tmp_path, capsys):
    path = _weights(tmp_path / "rot.safetensors", Registry.from_json(ROTATION))
    assert cli_main(["parse", "rotate the object by 30 degrees", "--weights", str(path)]) == 0
    assert _lines(capsys.readouterr().out)[0]["task"] == "rotation"
    assert cli_main(["parse", "Increase the exposure by 1.5 EV", "--weights", str(path)]) == 2
    assert "accepted: rotation" in _lines(capsys.readouterr().out)[0]["error"]


@pytest.mark.parametrize("kind", ["missing", "garbage", "bad registry"])
def test_cli_unusable_weights_is_one_line(tmp_path, capsys, kind):
    assert cli_main(["parse", "exposure +1EV", "--weights", str(_bad_file(tmp_path, kind))]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and "error:" in err


def test_cli_as_a_module(tmp_path):
    cmd = [sys.executable, "-m", "kontext_sliders.core.numeric", "parse"]
    bad = subprocess.run(cmd + ["decrease the colour temperature by 800 K", "exposure by 1.5 dB"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2, bad.stderr
    rows = _lines(bad.stdout)
    assert rows[0] == {"line": "decrease the colour temperature by 800 K", "task": "temperature", "delta": -800.0,
                       "unit": "K", "canonical": "temperature -800 K"}
    assert "unknown unit 'dB'" in rows[1]["error"]
    weights = str(_weights(tmp_path / "n.safetensors"))
    good = subprocess.run(cmd + ["--weights", weights, "rotate the hue by -30 degrees"],
                          capture_output=True, text=True, timeout=120)
    assert good.returncode == 0 and _lines(good.stdout) == [
        {"line": "rotate the hue by -30 degrees", "task": "hue", "delta": -30.0, "unit": "deg",
         "canonical": "hue -30 deg"}]
