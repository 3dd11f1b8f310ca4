"""``.ci/run`` fails when ``make lint`` (ruff, mypy) or ``make test`` fails, and only then.

The script runs against a stand-in ``make`` (first on ``PATH``) whose exit status per target the
test chooses, so what is checked is the script's own logic; the Makefile's ``lint`` target is
checked to run ruff and mypy, so a failing ruff or mypy fails ``make lint``.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO

FAKE_MAKE = """#!/usr/bin/env bash
echo "$1" >> "$CALLS"
case "$1" in
  lint) exit "$LINT_RC" ;;
  test) exit "$TEST_RC" ;;
esac
exit 99
"""


def _ci(tmp_path: Path, lint_rc: int, test_rc: int) -> tuple[int, list[str]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    make = bin_dir / "make"
    make.write_text(FAKE_MAKE)
    make.chmod(0o755)
    calls = tmp_path / "calls"
    calls.unlink(missing_ok=True)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "CALLS": str(calls),
        "LINT_RC": str(lint_rc),
        "TEST_RC": str(test_rc),
    }
    done = subprocess.run([str(REPO / ".ci" / "run")], env=env, capture_output=True, text=True, timeout=60)
    return done.returncode, calls.read_text().split()


@pytest.mark.parametrize(
    ("lint_rc", "test_rc", "ok"),
    [(0, 0, True), (1, 0, False), (2, 0, False), (0, 1, False), (0, 5, False), (1, 1, False)],
)
def test_ci_fails_when_lint_or_tests_fail(tmp_path: Path, lint_rc: int, test_rc: int, ok: bool) -> None:
    rc, calls = _ci(tmp_path, lint_rc, test_rc)
    assert (rc == 0) is ok
    assert calls == ["lint", "test"]  # both always run: one CI pass reports every failure


def test_make_lint_runs_ruff_and_mypy() -> None:
    recipe = subprocess.run(
        ["make", "-n", "-o", ".venv/.installed", "lint"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert recipe.returncode == 0, recipe.stderr
    lines = recipe.stdout.splitlines()
    assert any(line.endswith("ruff check fedge tests bench examples") for line in lines)
    assert any(line.endswith("mypy fedge") for line in lines)
