"""Every command in the README's and docs/' shell blocks is checked by a test, so no page
documents a command that is refused.

Each kind is checked as far as a test can afford: `purerl-train` lines are composed and
validated job by job (the same checks purerl-train makes before running anything, `build_plan`
included); `purerl-memory` lines run; `purerl-analyze` / `purerl-eval` lines parse with the
apps' own parsers (their end-to-end runs live in test_analysis.py and test_policies.py);
`python -m experiments.X key=value` lines load their plan at the requested scale;
`python benchmarks/X.py ...` and `python -m experiments.X --flags` lines parse their
flags; `make` targets exist; `pip install -e '.[extras]'` names extras that exist."""

from __future__ import annotations

import functools
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PLACEHOLDER = re.compile(r"<\w+>")


def documented_commands() -> list[tuple[str, str]]:
    """(page, command) for every line of every bash/sh block, comments dropped."""
    out = []
    for page in PAGES:
        for block in re.findall(r"```(?:bash|sh|shell|console)\n(.*?)```", page.read_text(), re.S):
            for line in block.replace("\\\n", " ").splitlines():  # join continued lines
                line = re.split(r"\s{2,}#|\s#\s", line)[0].strip()
                # one command per piece of `a; b`, `a && b`, `a &` (a loop's body included)
                for piece in re.split(r";|&&|&\s*$", line):
                    piece = re.sub(r"^(do|then|else)\s+", "", piece.strip())
                    if piece and not piece.startswith("#"):
                        out.append((page.name, piece))
    return out


COMMANDS = documented_commands()


def _words(command: str) -> list[str]:
    words = shlex.split(command)
    while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):  # leading VAR=value assignments
        words = words[1:]
    if words and words[0].endswith("python"):
        return ["python", *words[1:]]
    return words


def test_every_page_has_commands():
    pages = {page for page, _ in COMMANDS}
    assert {"README.md", "hydra.md", "llm.md", "attention.md"} <= pages


@pytest.mark.parametrize("page,command", [c for c in COMMANDS if _words(c[1])[0] == "purerl-train"],
                         ids=lambda x: x[:60] if isinstance(x, str) else x)
def test_purerl_train_commands_validate(page, command, tmp_path, monkeypatch):
    from purerl.cli.train import validate_command_line

    monkeypatch.chdir(tmp_path)  # relative sweep folders land here, not in the checkout
    args = _words(command)[1:]
    run_dir = [f"hydra.sweep.dir={tmp_path}/multirun"] if "-m" in args else [f"hydra.run.dir={tmp_path}/job"]
    assert validate_command_line([*args, *run_dir]) == [], f"{page}: {command}"


@pytest.mark.parametrize("page,command", [c for c in COMMANDS if _words(c[1])[0] == "purerl-memory"])
def test_purerl_memory_commands_run(page, command, capsys):
    from purerl.cli.memory import main

    main(_words(command)[1:])
    assert "|" in capsys.readouterr().out, f"{page}: {command} printed no table"


@pytest.mark.parametrize("page,command", [c for c in COMMANDS if _words(c[1])[0] in ("purerl-analyze", "purerl-eval")])
def test_analyze_and_eval_commands_parse(page, command):
    words = _words(command)
    if words[0] == "purerl-analyze":
        from purerl.cli.analyze import parse_args

        assert parse_args(words[1:]).sweep
    else:
        from purerl.cli.evaluate import build_parser

        assert build_parser().parse_args(words[1:]).job_dirs


def _python_commands(kind: str) -> list[tuple[str, str]]:
    found = []
    for page, command in COMMANDS:
        words = _words(command)
        if words[0] != "python" or PLACEHOLDER.search(command):
            continue
        if kind == "experiment" and words[1:2] == ["-m"] and words[2].startswith("experiments."):
            found.append((page, command))
        if kind == "script" and len(words) > 1 and words[1].endswith(".py"):
            found.append((page, command))
    return found


@pytest.mark.parametrize("page,command", _python_commands("experiment"))
def test_experiment_commands_load_their_plan(page, command):
    import importlib

    from experiments import lab

    words = _words(command)
    name = words[2].removeprefix("experiments.")
    module = importlib.import_module(f"experiments.{name}")
    args = words[3:]
    if any(a.startswith("--") for a in args):  # an argparse script: its flags must parse
        done = subprocess.run([sys.executable, "-m", f"experiments.{name}", "--help"], cwd=ROOT,
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        flags = {a.split("=")[0] for a in args if a.startswith("--")}
        assert all(f in done.stdout for f in flags), f"{page}: {command}: unknown flag in {flags}"
        return
    assert hasattr(module, "main")
    plan = lab.load_plan(name, args)
    assert plan.experiment == name


@functools.cache
def script_help(script: Path) -> subprocess.CompletedProcess:
    """`python <script> --help`, once per script however many documented commands run it."""
    return subprocess.run([sys.executable, str(script), "--help"], cwd=ROOT, capture_output=True, text=True)


@pytest.mark.xdist_group("docs-scripts")  # one worker, so each script's --help runs once
@pytest.mark.parametrize("page,command", _python_commands("script"))
def test_script_commands_parse_their_flags(page, command):
    words = _words(command)
    script = ROOT / words[1]
    assert script.is_file(), f"{page}: {command}: no {words[1]}"
    done = script_help(script)
    assert done.returncode == 0, done.stderr[-2000:]
    flags = {a.split("=")[0] for a in words[2:] if a.startswith("--")}
    assert all(f in done.stdout for f in flags), f"{page}: {command}: unknown flag in {flags}"


def test_make_targets_and_pip_extras_exist():
    makefile = (ROOT / "Makefile").read_text()
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    checked = 0
    for page, command in COMMANDS:
        words = _words(command)
        if words[0] == "make":
            assert re.search(rf"^{words[1]}:", makefile, re.M), f"{page}: {command}: no such target"
            checked += 1
        if words[:3] == ["pip", "install", "-e"]:
            named = re.findall(r"\[([^\]]+)\]", words[3])[0].split(",")
            assert set(named) <= extras, f"{page}: {command}: unknown extras {set(named) - extras}"
            checked += 1
    assert checked >= 3


def test_gpu_check_fits_its_budget_and_reports_every_step():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu_check

    steps = gpu_check.plan(quick=False)
    assert sum(s.timeout_s for s in steps) <= 8 * 60
    assert any("16384" in " ".join(s.command) for s in steps)
    outcomes = [{"step": s, "status": "exit 0" if i else "timed out after 20 s", "seconds": 1.5, "output": "ok\n"}
                for i, s in enumerate(steps)]
    text = gpu_check.report(outcomes)
    assert "| devices | timed out after 20 s | 1.5 |" in text
    assert all(f"## {s.name}" in text for s in steps)
