"""The README's "Writing a task" as a newcomer follows it: its `mytask.py`, saved in an empty
directory (next to a stray `fedge/` folder), trained with its own `fedge simulate` command from
there (no PYTHONPATH), then exported."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.e2e.test_user_tasks import fedge_script

pytestmark = pytest.mark.e2e


def test_the_readme_task_runs_from_its_own_directory(tmp_path: Path) -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Writing a task", 1)[1]
    code = re.search(r"```python\n(# mytask\.py.*?)```", section, re.S)
    command = re.search(r"```sh\n(fedge simulate --task mytask:TASK[^\n#]*)", section)
    assert code and command, "the README's task example or its command is missing"
    (tmp_path / "mytask.py").write_text(code.group(1))
    # A newcomer's directory may hold a checkout with its own fedge/ folder: it must not shadow fedge.
    (tmp_path / "fedge").mkdir()
    (tmp_path / "fedge" / "__init__.py").write_text("raise ImportError('the wrong fedge was imported')\n")
    work = tmp_path / "sim"
    args = shlex.split(command.group(1))[1:]
    done = fedge_script(*args, "--clients", "2", "--rounds", "2", "--workdir", str(work), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    run_dir = next((work / "server" / "runs").iterdir())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["task"] == "mytask:TASK" and summary["final-accuracy"] > 0.8
    assert (run_dir / "bundles" / "round-0002" / "bundle.pb").is_file()  # exported like a built-in task
