"""The --from-compose runner on a tiny compose file (no fedge): order, network, volumes, failures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from fedge.errors import FedgeError
from fedge.server.run_cli import RunFailed
from fedge.sim.compose_run import simulate_compose

SERVE = (
    "import sys, http.server as h; host, port = sys.argv[1].split(':'); "
    "h.HTTPServer((host, int(port)), h.SimpleHTTPRequestHandler).serve_forever()"
)
PROBE = "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)"


def _project(tmp_path: Path, **changes: dict[str, object]) -> Path:
    doc: dict[str, object] = {
        "name": "tiny",
        "services": {
            "init": {
                "image": "x",
                "command": ["sh", "-c", "echo ${GREETING:-hi} > /data/hello"],
                "volumes": ["data:/data"],
            },
            "web": {
                "image": "x",
                "command": ["python", "-c", SERVE, "0.0.0.0:8000"],
                "working_dir": "/srv",
                "expose": ["8000"],
                "depends_on": {"init": {"condition": "service_completed_successfully"}},
                "healthcheck": {
                    "test": ["CMD", "python", "-c", PROBE, "http://localhost:8000/"],
                    "interval": "1s",
                    "start_period": "20s",
                    "start_interval": "100ms",
                },
            },
            "worker": {
                "image": "x",
                "command": "sh -c 'echo $$FEDGE_REPLICA > /own/n; sleep 60'",
                "deploy": {"replicas": 2},
                "volumes": ["/own"],
            },  # fmt: skip
            "run": {
                "image": "x",
                "profiles": ["run"],
                "command": ["sh", "-c", 'cat /data/hello && python -c "$$0" http://web:8000/', PROBE],
                "depends_on": {"web": {"condition": "service_healthy"}},
                "volumes": ["data:/data:ro"],
            },
        },
        "volumes": {"data": {}},
    }
    for name, change in changes.items():
        doc["services"][name].update(change)  # type: ignore[index]
    path = tmp_path / "compose.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_services_run_in_order_with_emulated_network_and_volumes(tmp_path: Path) -> None:
    work = tmp_path / "work"
    console = Console(record=True, width=200)
    volumes = simulate_compose(str(_project(tmp_path)), {"GREETING": "hello"}, {"worker": 3}, work, console)
    assert (volumes / "data" / "hello").read_text() == "hello\n"
    assert "run | hello" in console.export_text()  # run read the volume and reached web:8000
    assert [(work / "containers" / f"worker-{n}" / "own" / "n").read_text() for n in (1, 2, 3)] == [
        "1\n",
        "2\n",
        "3\n",
    ]
    assert json.dumps(sorted(p.name for p in (work / "logs").iterdir())) == json.dumps(
        ["init-1.log", "run-1.log", "web-1.log", "worker-1.log", "worker-2.log", "worker-3.log"]
    )


def test_a_failed_one_shot_stops_everything(tmp_path: Path) -> None:
    path = _project(tmp_path, init={"command": ["sh", "-c", "exit 3"]})
    with pytest.raises(FedgeError, match="one-shot service init exited with 3"):
        simulate_compose(str(path), {}, {}, tmp_path / "w", Console())


def test_an_unhealthy_service_is_reported_with_its_probe_output(tmp_path: Path) -> None:
    check = {"test": ["CMD-SHELL", "echo not yet >&2; exit 1"], "interval": "100ms", "retries": 2}
    path = _project(tmp_path, web={"healthcheck": check})
    with pytest.raises(FedgeError, match="web-1 never became healthy: not yet") as err:
        simulate_compose(str(path), {}, {}, tmp_path / "w", Console())
    assert "web-1.log" in err.value.hint


def test_the_run_service_exit_code_decides(tmp_path: Path) -> None:
    path = _project(tmp_path, run={"command": ["sh", "-c", "exit 4"]})
    with pytest.raises(RunFailed, match="run service exited with 4") as err:
        simulate_compose(str(path), {}, {}, tmp_path / "w", Console())
    assert err.value.exit_code == 1


def test_missing_run_service_and_cycles(tmp_path: Path) -> None:
    path = _project(tmp_path)
    with pytest.raises(FedgeError, match="no 'launch' service"):
        simulate_compose(str(path), {}, {}, tmp_path / "w", Console(), run_service="launch")
    cyc = _project(tmp_path, init={"depends_on": ["web"]})
    with pytest.raises(FedgeError, match="depends_on cycle"):
        simulate_compose(str(cyc), {}, {}, tmp_path / "w2", Console())
