"""Reports, at the end of every run, whether the ComfyUI suite really ran; one torch thread for the tests."""
import pytest
import torch

import ks_fixtures as F
from kontext_sliders.nodes.comfy_location import ComfyUIPathError

_comfy_outcomes = {"passed": 0, "failed": 0, "skipped": 0}


def pytest_collection_modifyitems(items):
    for item in items:
        if item.get_closest_marker("comfyui"):
            item.user_properties.append(("comfyui", True))


def pytest_configure(config):
    # the tests' models are tiny: a thread pool costs more than it gains, and on a busy 2-core machine its threads
    # spin waiting for a core (a family test file: 413 s with the default pool, 57 s with one thread). The demos
    # set their own thread count (--threads) and put the previous one back.
    torch.set_num_threads(1)
    try:  # a wrong COMFYUI_PATH stops the run here instead of skipping (or testing another ComfyUI)
        F.find_comfyui()
    except ComfyUIPathError as e:
        raise pytest.UsageError(str(e)) from None
    config.addinivalue_line("markers", "comfyui: runs ComfyUI's own code (skips when ComfyUI is not found)")
    config.addinivalue_line("markers", "slow: minutes, not seconds (the full demos); left out by default, `-m slow` runs them")


def pytest_runtest_logreport(report):
    if ("comfyui", True) not in report.user_properties:
        return
    if report.when == "call" or report.skipped or (report.failed and report.when != "teardown"):
        _comfy_outcomes[report.outcome] += 1


def pytest_terminal_summary(terminalreporter):
    ran = _comfy_outcomes["passed"] + _comfy_outcomes["failed"]
    root = F.find_comfyui()
    if root is None:  # a comfyui-marked test that needs no ComfyUI (e.g. a browser-log filter) may still run
        line = f"ComfyUI suite: not run: {F.SKIP_NO_COMFY}"
    elif ran:
        line = f"ComfyUI suite: ran {ran} tests against {root} ({_comfy_outcomes['failed']} failed)"
    else:
        line = "ComfyUI suite: not selected"
    terminalreporter.write_line(line)
