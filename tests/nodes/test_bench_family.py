"""bench/step_overhead.py --family end to end at the tests' tiny size: it builds every family's model through
ComfyUI's detection, patches every knob through the pack's nodes and passes its own sanity checks (every
variant differs from the unpatched model, the unpatched output never changes, a neutral knob equals it).
No timing is asserted."""
import json
import os
import subprocess
import sys

import pytest

import ks_fixtures as F

pytestmark = pytest.mark.comfyui


@pytest.mark.parametrize("family", ["flux1", "flux2", "qwen_image"])
def test_family_bench_runs_and_its_checks_pass(family, tmp_path):
    root = F.import_comfyui()
    out = tmp_path / "out.json"
    env = dict(os.environ, COMFYUI_PATH=str(root))
    result = subprocess.run([sys.executable, "bench/step_overhead.py", "--family", family, "--size", "tiny",
                             "--warmup", "0", "--repeats", "1", "--hollow-iters", "1", "--json", str(out)],
                            cwd=F.PACK_DIR, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())
    assert report["patch_active"] and report["unpatched_restored"] and report["neutral_equal"]
    expected = {"modulation", "sliders", "guidance", "velocity"} | (
        {"kontinuous", "slideredit", "numeric"} if family == "flux1" else set())
    assert set(report["results"]) == {"unpatched"} | expected
    assert all("overhead_pct" in r for r in report["results"].values())
