"""The README as a newcomer reads it: every `fedge` command it shows exists with the flags it shows,
and each step of a new user's path is documented (the task example itself runs in
tests/e2e/test_readme_task.py)."""

from __future__ import annotations

import re
import shlex

import click
import pytest
import typer

from fedge.cli import _register, app
from tests.conftest import REPO

README = (REPO / "README.md").read_text(encoding="utf-8")
EXAMPLE_README = (REPO / "examples" / "diabetes" / "README.md").read_text(encoding="utf-8")


def shell_commands(text: str) -> list[str]:
    """``fedge …`` command lines of the ```sh/```bash blocks (continuations joined, comments cut)."""
    lines: list[str] = []
    for block in re.findall(r"```(?:sh|bash)\n(.*?)```", text, re.S):
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            line = line.split(" #")[0].strip()
            for part in line.split("&&"):
                if part.strip().startswith("fedge "):
                    lines.append(part.strip())
    return lines


def _root() -> click.Command:
    _register()
    return typer.main.get_command(app)


@pytest.mark.parametrize("text", [README, EXAMPLE_README], ids=["README", "examples/diabetes"])
def test_every_fedge_command_shown_exists_with_its_flags(text: str) -> None:
    root = _root()
    commands = shell_commands(text)
    assert len(commands) >= 10 if text is README else len(commands) >= 4
    for line in commands:
        if "|" in line or "[" in line:  # a synopsis (`fedge run list | status RUN_ID`), not a command
            continue
        words = shlex.split(line)[1:]
        command = root
        while isinstance(command, click.Group) and words and not words[0].startswith("-"):
            assert words[0] in command.commands, f"unknown command in README: {line}"  # type: ignore[attr-defined]
            command = command.commands[words.pop(0)]  # type: ignore[attr-defined]
        options = {opt for param in command.params for opt in param.opts}
        unknown = [w for w in words if w.startswith("--") and w.split("=")[0] not in options]
        assert not unknown, f"{line}: {unknown} not options of that command"


@pytest.mark.parametrize(
    ("step", "needles"),
    [
        (
            "install on a server and a device, how fedge gets on PATH",
            ["pip install -e .", "source .venv/bin/activate"],
        ),
        ("device data formats", [".npz", ".csv", ".parquet", "photos/<class>", "label-column"]),
        ("writing a task", ["### Writing a task", "mytask:TASK", "examples/diabetes/", "--app-dir"]),
        ("task code on every device", ["Every device must have the task's code"]),
        ("bringing a Flower app", ["### Bringing a Flower app", "--server-app", "--client-app"]),
        ("which --admin-dir", ["cp pki/ca.pem pki/admin.pem pki/admin.key admin/", "not `pki/` itself"]),
        ("version, completion, verbosity", ["fedge --version", "--install-completion", "`-vv`"]),
        ("where a run's results are", ["summary.json", "metrics.jsonl", "plots/"]),
        ("accelerators and the measured decision", ["--device auto", "--gpus-per-client", "bench/gpu.py"]),
        ("GPU figures and provenance", ["H200", "2026-12-04", "53.9 GB/s", "6.0 GB/s", "6.59×", "6.54×"]),
        ("DP ε on the console", ["the console shows\nit every round"]),
    ],
)
def test_the_newcomer_path_is_documented(step: str, needles: list[str]) -> None:
    missing = [n for n in needles if n not in README]
    assert not missing, f"README lacks {step}: {missing}"
