"""A COMFYUI_PATH that is set but wrong is an error everywhere: tests, CI, benches; never a silent fall-back."""
import os
import subprocess
import sys

import pytest

import ks_fixtures as F
from kontext_sliders.nodes.comfy_location import ComfyUIPathError, find_comfyui


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "COMFYUI_PATH"}
    env.update(extra)
    return env


def test_wrong_explicit_path_raises_and_names_it(tmp_path, monkeypatch):
    (tmp_path / "comfy").mkdir()  # looks a bit like ComfyUI, is not
    monkeypatch.setenv("COMFYUI_PATH", str(tmp_path))
    with pytest.raises(ComfyUIPathError, match=f"COMFYUI_PATH={tmp_path} is not a ComfyUI folder"):
        find_comfyui()


def test_fallbacks_apply_only_when_the_variable_is_unset(tmp_path, monkeypatch):
    fake_home = tmp_path / "home"
    comfy = fake_home / "comfy" / "ComfyUI"
    (comfy / "comfy").mkdir(parents=True)
    (comfy / "comfy" / "model_patcher.py").write_text("")
    monkeypatch.setattr("pathlib.Path.home", lambda: fake_home)
    monkeypatch.delenv("COMFYUI_PATH", raising=False)
    assert find_comfyui(tmp_path / "pack") == comfy.resolve()
    monkeypatch.setenv("COMFYUI_PATH", str(tmp_path / "elsewhere"))
    with pytest.raises(ComfyUIPathError):
        find_comfyui(tmp_path / "pack")


def test_pytest_run_stops_with_the_message(tmp_path):
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "--co", "tests/core/test_flux_keys.py"],
                            cwd=F.PACK_DIR, env=_env(COMFYUI_PATH=str(tmp_path)), capture_output=True, text=True)
    assert result.returncode != 0
    assert f"COMFYUI_PATH={tmp_path} is not a ComfyUI folder" in result.stdout + result.stderr
    assert "skipped" not in result.stdout


def test_ci_script_refuses_before_building_anything(tmp_path):
    result = subprocess.run(["bash", ".ci/run"], cwd=F.PACK_DIR, env=_env(COMFYUI_PATH=str(tmp_path), HOME=str(tmp_path)),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"COMFYUI_PATH={tmp_path} is not a ComfyUI folder" in result.stderr
    assert not (tmp_path / ".cache").exists()  # no environment was started


def test_bench_exits_with_the_message(tmp_path):
    result = subprocess.run([sys.executable, "bench/step_overhead.py", "--device", "meta"], cwd=F.PACK_DIR,
                            env=_env(COMFYUI_PATH=str(tmp_path)), capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert f"COMFYUI_PATH={tmp_path} is not a ComfyUI folder" in result.stderr
