"""The trainer's command line: bad invocations are one-line errors that write nothing; --help is complete."""
import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("kornia")

from kontext_sliders.trainer.cli import build_parser, main  # noqa: E402


def run(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as e:  # argparse's own errors leave through SystemExit
        return e.code


@pytest.fixture()
def configs(tmp_path) -> Path:
    """Config files in a folder of their own, so that the working folder starts empty."""
    d = tmp_path / "configs"
    d.mkdir()
    (d / "broken.yaml").write_text("run: [oops\n")
    (d / "defaults.yaml").write_text("run: {max_steps: 3}\n")  # parses, but names no model and no data
    (d / "no_data.yaml").write_text(yaml.safe_dump({"model": {"scratch": {"num_layers": 1}},
                                                    "data": {"text_encoder": "learned"}}))
    (d / "typo.yaml").write_text(yaml.safe_dump({"model": {"scratch": {"num_layers": 1}},
                                                 "data": {"text_encoder": "learned", "trajectories": ["dat/cat"]}}))
    return d


BAD = [  # (argv, words the one-line message must contain); {c} = the configs folder
    ([], ["required", "synth,train,export,demo"]),
    (["train"], ["required", "--config"]),
    (["train", "--config", "missing.yaml"], ["missing.yaml", "not found"]),
    (["train", "--config", "{c}/broken.yaml"], ["broken.yaml", "not valid YAML"]),
    (["train", "--config", "{c}/defaults.yaml"], ["model.pretrained", "model.scratch"]),
    (["train", "--config", "{c}/no_data.yaml"], ["data.trajectories", "synth cat"]),
    (["train", "--config", "{c}/typo.yaml"], ["no such folder", "dat/cat"]),
    (["train", "--config", "{c}/defaults.yaml", "--set", "run.max_step=3"], ["unknown setting", "run.max_step"]),
    (["export", "no_such_run"], ["required", "--out"]),
    (["export", "no_such_run", "--out", "slider.safetensors"], ["no_such_run", "run.output_dir"]),
    (["synth"], ["required", "cat,filter"]),
    (["synth", "cat"], ["required", "--out"]),
    (["demo", "--steps", "many"], ["--steps", "invalid int value"]),
]


@pytest.mark.parametrize("argv, words", BAD, ids=[" ".join(a) or "(none)" for a, _ in BAD])
def test_a_bad_invocation_is_one_line_exit_2_and_writes_nothing(tmp_path, configs, monkeypatch, capsys, argv, words):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    assert run([a.replace("{c}", str(configs)) for a in argv]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("kontext-sliders") and "error:" in err
    for word in words:
        assert word in err, (word, err)
    assert list(cwd.iterdir()) == []  # nothing written: not output/config.yaml, not an empty folder
    assert captured.out == ""


def _parsers(parser: argparse.ArgumentParser, name: str = "kontext-sliders"):
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _parsers(sub, f"{name} {sub_name}")


def test_every_option_of_every_command_has_help_and_no_raw_rst():
    parsers = dict(_parsers(build_parser()))
    assert {"kontext-sliders synth cat", "kontext-sliders synth filter", "kontext-sliders train",
            "kontext-sliders export", "kontext-sliders demo"} <= set(parsers)
    for name, parser in parsers.items():
        assert parser.description and "``" not in parser.description and ":func:" not in parser.description, name
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            assert action.help and action.help.strip(), (name, action.option_strings or action.dest)
            assert "``" not in action.help and ":func:" not in action.help, (name, action.help)
        assert "``" not in parser.format_help(), name


def test_required_options_are_marked_required_in_help():
    parsers = dict(_parsers(build_parser()))
    for name, option in (("train", "--config"), ("export", "--out"), ("synth cat", "--out"), ("synth filter", "--data")):
        parser = parsers[f"kontext-sliders {name}"]
        action = next(a for a in parser._actions if option in a.option_strings)
        assert action.required, (name, option)
        usage = parser.format_usage()
        assert f"{option} " in usage and f"[{option}" not in usage, usage  # shown outside the [optional] brackets


BLOCKER = """
import sys
class Missing:  # behaves as if the module were not installed
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == {module!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, Missing())
from kontext_sliders.trainer.cli import main
sys.exit(main({argv!r}))
"""


@pytest.mark.parametrize("module, argv", [
    ("skimage", ["synth", "cat", "--out", "data", "--tasks", "exposure", "--size", "16"]),
    ("kornia", ["export", "run", "--out", "slider.safetensors"]),
    ("diffusers", ["demo", "--out", "demo_output", "--steps", "1"]),
])
def test_without_the_train_extra_a_command_says_how_to_install_it(tmp_path, module, argv):
    r = subprocess.run([sys.executable, "-c", BLOCKER.format(module=module, argv=argv)], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert r.returncode == 2, r.stderr
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert f"'{module}'" in err and 'pip install -e ".[train]"' in err
    assert list(tmp_path.iterdir()) == []
