"""A Flower app's [tool.flwr.app.config] is its run config's base, as with ``flwr run``."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedge.errors import FedgeError
from fedge.server.run_cli import build_run_config

PYPROJECT = """
[project]
name = "quick"
version = "1.0.0"

[tool.flwr.app]
publisher = "someone"

[tool.flwr.app.components]
serverapp = "quick.server_app:app"
clientapp = "quick.client_app:app"

[tool.flwr.app.config]
num-server-rounds = 7
fraction-fit = 0.5
local-epochs = 1
[tool.flwr.app.config.optimizer]
lr = 0.01
"""


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    (tmp_path / "pyproject.toml").write_text(PYPROJECT)
    (tmp_path / "quick").mkdir()
    (tmp_path / "quick" / "__init__.py").write_text("")
    (tmp_path / "quick" / "server_app.py").write_text("")
    return tmp_path


def test_the_app_config_is_read_and_set_overrides_it(project: Path) -> None:
    config = build_run_config(
        None, None, None, None, ["local-epochs=3"], "quick.server_app:app", str(project)
    )
    assert config == {"num-server-rounds": 7, "fraction-fit": 0.5, "local-epochs": 3, "optimizer.lr": 0.01}


def test_rounds_replace_the_apps_own_only_when_given(project: Path) -> None:
    given = build_run_config(None, 2, None, 4, None, "quick.server_app:app", str(project))
    assert given["num-server-rounds"] == 2 and given["min-clients"] == 4


def test_the_project_is_found_beside_the_apps_package_without_app_dir(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(project))
    config = build_run_config(None, None, None, None, None, "quick.server_app:app")
    assert config["num-server-rounds"] == 7


def test_fedge_app_gets_only_what_was_given_and_its_planned_rounds(project: Path) -> None:
    # fedge's own app reads no pyproject, even from an --app-dir that has one.
    config = build_run_config("digits", None, None, None, None, "fedge.server.app:app", str(project))
    assert config == {"task": "digits", "num-server-rounds": 3}


def test_a_broken_app_config_is_a_clear_error(project: Path) -> None:
    (project / "pyproject.toml").write_text("[tool.flwr.app.config]\nx = [1, 2]\n")
    with pytest.raises(FedgeError, match="tool.flwr.app.config"):
        build_run_config(None, None, None, None, None, "quick.server_app:app", str(project))
    (project / "pyproject.toml").write_text("[tool.flwr.app.config\n")
    with pytest.raises(FedgeError, match="cannot read"):
        build_run_config(None, None, None, None, None, "quick.server_app:app", str(project))
