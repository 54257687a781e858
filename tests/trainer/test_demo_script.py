"""trainer/demo.sh, the README's one-command main job: which torch it installs, venv reuse, the demo call.

Runs the script with KS_DRY_RUN=1 (prints its commands) or against stub executables: nothing is installed.
"""
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "trainer" / "demo.sh"
SYSTEM_PATH = "/usr/bin:/bin"  # bash, cat, cksum; no nvidia-smi unless the machine really has one

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def executable(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def run_script(tmp_path: Path, *args: str, nvidia_smi: str | None = None, dry: bool = True, **env) -> subprocess.CompletedProcess:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    if nvidia_smi is not None:
        executable(bin_dir / "nvidia-smi", nvidia_smi)
    environment = {"PATH": f"{bin_dir}:{SYSTEM_PATH}", "HOME": str(tmp_path), "KS_VENV": str(tmp_path / "venv"), **env}
    if dry:
        environment["KS_DRY_RUN"] = "1"
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=60,
                          env=environment, cwd=tmp_path)


def commands(result: subprocess.CompletedProcess) -> list[str]:
    return [line[2:] for line in result.stdout.splitlines() if line.startswith("+ ")]


def test_without_a_gpu_the_cpu_torch_pin_goes_in_before_the_train_extra(tmp_path):
    if shutil.which("nvidia-smi", path=SYSTEM_PATH):
        pytest.skip("this machine has nvidia-smi in /usr/bin")
    r = run_script(tmp_path, "--steps", "3")
    assert r.returncode == 0, r.stderr
    venv = tmp_path / "venv"
    assert commands(r) == [
        f"python3 -m venv {venv}",
        f"{venv}/bin/python -m pip install --upgrade pip",
        f"{venv}/bin/python -m pip install torch==2.13.0",
        f"{venv}/bin/python -m pip install -e {REPO}[train]",
        f"{venv}/bin/kontext-sliders demo --out demo_output --require-targets --steps 3",
    ]
    assert f"report: {tmp_path}/demo_output/report.md" in r.stdout


@pytest.mark.parametrize("nvidia_smi, torch_line", [
    ("exit 9\n", "pip install torch==2.13.0"),  # installed, but no driver / no GPU: CPU
    ('echo "GPU 0: NVIDIA H100 (UUID: GPU-0)"\n', "pip install torch"),  # a GPU: PyPI's default build
])
def test_nvidia_smi_decides_cpu_or_gpu_torch(tmp_path, nvidia_smi, torch_line):
    r = run_script(tmp_path, nvidia_smi=nvidia_smi)
    assert r.returncode == 0, r.stderr
    torch_installs = [c for c in commands(r) if "pip install torch" in c]
    assert len(torch_installs) == 1 and torch_installs[0].split("-m ", 1)[1].startswith(torch_line)
    if "GPU" in nvidia_smi:
        assert torch_installs[0].endswith("pip install torch")


def test_the_torch_requirement_and_the_output_folder_can_be_chosen(tmp_path):
    r = run_script(tmp_path, "--out", "elsewhere", nvidia_smi="exit 9\n", KS_TORCH="torch==2.12.1",
                   KS_TORCH_INDEX="http://127.0.0.1:9/cpu")
    assert r.returncode == 0, r.stderr
    assert any(c.endswith("-m pip install torch==2.12.1 --extra-index-url http://127.0.0.1:9/cpu") for c in commands(r))
    assert commands(r)[-1].endswith("demo --out demo_output --require-targets --out elsewhere")  # the last wins
    assert f"report: {tmp_path}/elsewhere/report.md" in r.stdout


def test_a_complete_venv_is_reused_and_the_demo_status_comes_back(tmp_path):
    """Real runs (no dry run) against a stub venv: the first sets up, the second only runs the demo."""
    log = tmp_path / "calls.log"
    executable(tmp_path / "venv" / "bin" / "python", f'echo "python $*" >> {log}\n')
    executable(tmp_path / "venv" / "bin" / "kontext-sliders", f'echo "kontext-sliders $*" >> {log}\nexit 1\n')
    first = run_script(tmp_path, nvidia_smi="exit 9\n", dry=False)
    assert first.returncode == 1  # the demo's status (1: targets missed) is the script's
    calls = log.read_text().splitlines()
    assert [c.split()[0:4] for c in calls[:3]] == [["python", "-m", "pip", "install"]] * 3
    assert calls[3] == "kontext-sliders demo --out demo_output --require-targets"
    assert "report: " in first.stdout

    log.unlink()
    second = run_script(tmp_path, nvidia_smi="exit 9\n", dry=False)
    assert second.returncode == 1 and "reusing" in second.stdout
    assert log.read_text().splitlines() == ["kontext-sliders demo --out demo_output --require-targets"]

    log.unlink()  # another torch requirement: set up again
    third = run_script(tmp_path, nvidia_smi="exit 9\n", dry=False, KS_TORCH="torch==2.12.1")
    assert third.returncode == 1 and "setting up" in third.stdout
    assert any("torch==2.12.1" in c for c in log.read_text().splitlines())


def test_the_slideredit_demo_is_one_option_away_and_its_report_is_named(tmp_path):
    r = run_script(tmp_path, "--method", "slideredit", nvidia_smi="exit 9\n")
    assert r.returncode == 0, r.stderr
    assert commands(r)[-1].endswith("demo --out demo_output --require-targets --method slideredit")
    assert "running the slideredit demo" in r.stdout
    assert f"report: {tmp_path}/demo_output/report_slideredit.md" in r.stdout


def test_the_knobs_demo_names_its_report(tmp_path):
    r = run_script(tmp_path, "--method", "knobs", "--family", "flux2", nvidia_smi="exit 9\n")
    assert r.returncode == 0, r.stderr
    assert commands(r)[-1].endswith("demo --out demo_output --require-targets --method knobs --family flux2")
    assert f"report: {tmp_path}/demo_output/report_knobs.md" in r.stdout
