"""deploy/: the example configs name every option with its true default and load with fedge's own
loader; the systemd units pass ``systemd-analyze verify`` and carry the hardening they promise."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from fedge.config import EdgeConfig, ServerConfig, load
from tests.conftest import REPO

DEPLOY = REPO / "deploy"
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))
EXAMPLES = [(ServerConfig, DEPLOY / "server.toml", "server"), (EdgeConfig, DEPLOY / "edge.toml", "edge")]
KEY = re.compile(r"^([a-z][a-z-]*) = ")


def documented(path: Path) -> dict[str, tuple[str, Any]]:
    """``{key: (its comment block, the value after "# default:")}`` for each key line of ``path``."""
    out: dict[str, tuple[str, Any]] = {}
    block: list[str] = []
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            block.append(line)
            continue
        match = KEY.match(line)
        if match:
            defaults = [c.split(":", 1)[1].strip() for c in block if c.startswith("# default:")]
            assert len(defaults) == 1, f"{path.name}: {match[1]} needs exactly one '# default:' line"
            out[match[1]] = ("\n".join(block), tomllib.loads(f"v = {defaults[0]}")["v"])
        block = []
    return out


@pytest.mark.parametrize(("cls", "path", "section"), EXAMPLES, ids=["server", "edge"])
def test_example_config_has_every_option_documented_with_its_default(
    cls: type, path: Path, section: str
) -> None:
    keys = documented(path)
    fields = {f.name.replace("_", "-"): f for f in dataclasses.fields(cls)}
    assert sorted(keys) == sorted(fields), "every config field, and nothing else, belongs in the example"
    defaults = cls()
    for key, (comment, default) in keys.items():
        assert default == getattr(defaults, key.replace("-", "_")), f"{path.name}: stale default of {key}"
        assert len(comment.splitlines()) >= 2, f"{path.name}: {key} is not explained"


@pytest.mark.parametrize(("cls", "path", "section"), EXAMPLES, ids=["server", "edge"])
def test_example_config_loads_with_fedges_loader(cls: type, path: Path, section: str) -> None:
    cfg: Any = load(cls, str(path), section, {})
    table = tomllib.loads(path.read_text())[section]
    for key, value in table.items():
        assert getattr(cfg, key.replace("-", "_")) == value
    assert cfg.state_dir.startswith("/var/lib/fedge")  # the units' StateDirectory


def unit_keys(path: Path) -> dict[str, list[str]]:
    """``{"Section.Key": [values…]}``: systemd's INI dialect allows repeated keys."""
    out: dict[str, list[str]] = {}
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not key=value: {line}"
        out.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return out


@pytest.mark.parametrize("unit", UNITS, ids=[u.stem for u in UNITS])
def test_unit_hardening(unit: Path) -> None:
    keys = unit_keys(unit)
    service = unit.stem.removeprefix("fedge-")
    state = "fedge" if service == "client" else "fedge-server"
    expect = {
        "Service.Restart": ["on-failure"],
        "Service.StateDirectory": [state],
        "Service.ReadWritePaths": [f"/var/lib/{state}"],
        "Service.User": [state],
        "Service.NoNewPrivileges": ["yes"],
        "Service.ProtectSystem": ["strict"],
        "Service.ProtectHome": ["yes"],
        "Service.PrivateTmp": ["yes"],
        "Service.RestrictAddressFamilies": ["AF_INET AF_INET6 AF_UNIX"],
        "Service.SystemCallFilter": ["@system-service"],
        "Service.CapabilityBoundingSet": [""],
        "Install.WantedBy": ["multi-user.target"],
    }
    for key, values in expect.items():
        assert keys.get(key) == values, f"{unit.name}: {key}"
    assert "Service.DynamicUser" not in keys and keys["Service.User"] != ["root"]
    # torch's oneDNN JIT needs W+X memory (tests/e2e/test_service_sandbox.py shows it fails).
    assert "Service.MemoryDenyWriteExecute" not in keys
    exec_start = keys["Service.ExecStart"][0].split()
    assert exec_start[1:4] == [service if service == "server" else "client", "start", "--config"]
    config = Path(exec_start[4])
    assert (DEPLOY / config.name).is_file(), "the unit's --config must be one of the examples"


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (the key checks above still ran)")
    fedge = Path(sys.executable).parent / "fedge"  # verify checks that ExecStart's binary exists
    for unit in UNITS:
        text = unit.read_text().replace("/opt/fedge/venv/bin/fedge", str(fedge))
        (tmp_path / unit.name).write_text(text)
    done = subprocess.run(
        ["systemd-analyze", "verify", *(str(tmp_path / u.name) for u in UNITS)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # verify exits 0 even for unknown keys; it only warns. Any output is a finding.
    assert done.returncode == 0 and not done.stdout.strip() and not done.stderr.strip(), done.stderr


def test_sysusers_snippet_creates_the_units_users(tmp_path: Path) -> None:
    if shutil.which("systemd-sysusers") is None:
        pytest.skip("systemd-sysusers is not installed")
    (tmp_path / "etc").mkdir()
    conf = DEPLOY / "systemd" / "fedge.sysusers.conf"
    done = subprocess.run(
        ["systemd-sysusers", f"--root={tmp_path}", str(conf)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    users = {
        line.split(":")[0]: line.split(":") for line in (tmp_path / "etc" / "passwd").read_text().splitlines()
    }
    for name, home in (("fedge", "/var/lib/fedge"), ("fedge-server", "/var/lib/fedge-server")):
        assert users[name][5] == home and users[name][6] == "/usr/sbin/nologin"
        assert int(users[name][2]) < 1000  # a system user
