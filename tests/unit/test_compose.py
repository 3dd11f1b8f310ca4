"""compose/: schema validation, interpolation, the local runner's translation, Dockerfile consistency."""

from __future__ import annotations

import json
import re
import socket
import struct
import threading
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from fedge.errors import FedgeError
from fedge.sim import replica
from fedge.sim.compose import SCHEMA, duration, interpolate, interpolate_doc, load, read_dotenv, validate
from fedge.sim.compose_run import ComposeRunner
from fedge.sim.impair_sidecar import parse_forward
from fedge.sim.netem import NetemSpec
from tests.conftest import REPO

COMPOSE = REPO / "compose"
COMPOSE_FILES = sorted(COMPOSE.glob("*.yaml")) + sorted(COMPOSE.glob("*.yml"))
# docker-compose 1.29's own schema (origin in data/README.md): the older dialect, which refuses
# keys Compose v2 accepts (a top-level `name:`, healthcheck `start_interval`).
LEGACY_SCHEMA = Path(__file__).with_name("data") / "docker-compose-1.29-compose_spec.json"


def test_the_schema_is_the_vendored_compose_specification() -> None:
    schema = json.loads(SCHEMA.read_text())
    assert schema["title"] == "Compose Specification"
    assert "check-jsonschema" in (SCHEMA.parent / "README.md").read_text()  # origin noted


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_files_pass_schema_validation(path: Path) -> None:
    raw = yaml.safe_load(path.read_text())
    validate(raw, path.name)  # as written
    load(path, {})  # and as Compose sees it: interpolated with the defaults
    load(path, {"FEDGE_EDGES": "7", "FEDGE_NETEM": "delay 5ms"})


def _as_docker_compose_129_reads_it(path: Path, env: dict[str, str]) -> dict[str, Any]:
    """Interpolated, then the integer fields this file fills from variables cast back to int, as
    docker-compose 1.29 does before validating (compose/config/interpolation.py, its converters)."""
    doc: dict[str, Any] = interpolate_doc(yaml.safe_load(path.read_text()), env)
    for spec in doc.get("services", {}).values():
        if "replicas" in spec.get("deploy", {}):
            spec["deploy"]["replicas"] = int(spec["deploy"]["replicas"])
        if "retries" in spec.get("healthcheck", {}):
            spec["healthcheck"]["retries"] = int(spec["healthcheck"]["retries"])
    return doc


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_files_pass_docker_compose_129_schema(path: Path) -> None:
    validator = jsonschema.Draft201909Validator(json.loads(LEGACY_SCHEMA.read_text()))
    for env in ({}, {"FEDGE_EDGES": "7", "FEDGE_SERVER_ADDR": "impair:9092"}):
        errors = [
            f"{e.json_path}: {e.message}"
            for e in validator.iter_errors(_as_docker_compose_129_reads_it(path, env))
        ]
        assert errors == []


def test_the_legacy_schema_refuses_what_docker_compose_129_refuses() -> None:
    """The check above can fail: the keys the first real run on 1.29 tripped over are refused."""
    validator = jsonschema.Draft201909Validator(json.loads(LEGACY_SCHEMA.read_text()))
    assert json.loads(LEGACY_SCHEMA.read_text())["title"] == "Compose Specification"
    doc = _as_docker_compose_129_reads_it(COMPOSE / "compose.yaml", {})
    doc["name"] = "fedge"
    doc["services"]["server"]["healthcheck"]["start_interval"] = "1s"
    paths = sorted(e.json_path for e in validator.iter_errors(doc))
    assert paths == ["$", "$.services.server.healthcheck"]
    validate(doc, "compose.yaml")  # both are fine for Compose v2


def test_schema_violations_are_reported_with_their_path(tmp_path: Path) -> None:
    doc = yaml.safe_load((COMPOSE / "compose.yaml").read_text())
    doc["services"]["server"]["comand"] = ["typo"]
    doc["services"]["edge"]["deploy"]["replicas"] = [3]
    bad = tmp_path / "compose.yaml"
    bad.write_text(yaml.safe_dump(doc))
    with pytest.raises(FedgeError, match=r"Compose Specification") as err:
        load(bad, {})
    assert "$.services.server" in err.value.message and "comand" in err.value.message
    assert "$.services.edge.deploy.replicas" in err.value.message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("${A}", "a"),
        ("$A/x", "a/x"),
        ("${UNSET:-d}", "d"),
        ("${EMPTY:-d}", "d"),
        ("${EMPTY-d}", ""),
        ("${UNSET-d}", "d"),
        ("${A:+alt}", "alt"),
        ("${EMPTY:+alt}", ""),
        ("${EMPTY+alt}", "alt"),
        ("${UNSET:-${A}-${UNSET2:-z}}", "a-z"),
        ("$$i and $${X:-y}", "$i and ${X:-y}"),
        ("cost: 5$", "cost: 5$"),
        ("${UNSET}", ""),
    ],
)
def test_interpolation_follows_compose(text: str, expected: str) -> None:
    assert interpolate(text, {"A": "a", "EMPTY": ""}) == expected


def test_interpolation_errors() -> None:
    with pytest.raises(FedgeError, match="required variable NEED is not set: give it"):
        interpolate("${NEED:?give it}", {"NEED": ""})
    assert interpolate("${NEED?x}", {"NEED": ""}) == ""
    with pytest.raises(FedgeError, match="unclosed"):
        interpolate("${A", {})
    with pytest.raises(FedgeError, match="invalid interpolation"):
        interpolate("${A B}", {})


def test_durations() -> None:
    assert duration("1m30s") == 90 and duration("500ms") == 0.5 and duration(3) == 3.0
    with pytest.raises(FedgeError):
        duration("5 minutes")


def test_the_shipped_file_models_the_federation() -> None:
    project = load(COMPOSE / "compose.yaml", read_dotenv(COMPOSE / ".env") | {"FEDGE_EDGES": "5"})
    s = project.services
    assert project.name == "fedge"  # COMPOSE_PROJECT_NAME in compose/.env, read by both dialects
    assert set(s) == {"pki", "server", "edge", "edge-netem", "impair", "run"}
    assert s["edge"].replicas == 5 and s["edge-netem"].profiles == ["netem"] and s["run"].profiles == ["run"]
    assert s["impair"].profiles == ["impair"]
    assert s["server"].depends_on == {"pki": "service_completed_successfully"}
    assert (
        s["edge"].depends_on == s["run"].depends_on == s["impair"].depends_on == {"server": "service_healthy"}
    )
    assert s["server"].ports == [9092, 9093] and not s["edge"].ports
    assert [m.kind for m in s["edge"].mounts] == ["volume", "volume", "anonymous"]
    assert all(m.read_only for m in s["edge"].mounts[:2])
    assert "--min-clients=5" in s["run"].argv and "num-partitions=5" in s["edge"].argv[-1]


def test_the_netem_profile_is_the_same_profile_as_simulate_netem() -> None:
    env = load(COMPOSE / "compose.yaml", {}).services["edge-netem"].environment
    spec = NetemSpec.parse("delay=100ms jitter=20ms loss=2% rate=1mbit")
    assert env["FEDGE_NETEM"] == " ".join(spec.tc_netem_args())


def test_the_impair_sidecar_forwards_both_server_ports_with_the_same_profile() -> None:
    """Edges that dial impair:9092/9093 reach server:9092/9093 through the proxy, rate included."""
    argv = load(COMPOSE / "compose.yaml", {}).services["impair"].argv
    assert argv[:3] == ["python", "-m", "fedge.sim.impair_sidecar"]
    netem = [a.removeprefix("--netem=") for a in argv if a.startswith("--netem=")]
    forwards = [parse_forward(a.removeprefix("--forward=")) for a in argv if a.startswith("--forward=")]
    assert forwards == [(("0.0.0.0", 9092), ("server", 9092)), (("0.0.0.0", 9093), ("server", 9093))]
    spec = NetemSpec.parse(netem[0])
    assert spec == NetemSpec.parse("delay=100ms jitter=20ms loss=2% rate=1mbit")
    assert spec.impairment(with_rate=True).rate == 1e6
    custom = load(COMPOSE / "compose.yaml", {"FEDGE_IMPAIR": "delay=300ms"}).services["impair"].argv
    assert "--netem=delay=300ms" in custom
    # and the edges' dial addresses are what the sidecar's users set
    edge = load(
        COMPOSE / "compose.yaml", {"FEDGE_SERVER_ADDR": "impair:9092", "FEDGE_ENROLL_ADDR": "impair:9093"}
    )
    command = edge.services["edge"].argv[-1]
    assert "--server impair:9092" in command and "--server impair:9093" in command
    assert command.count("--server-name server") == 2  # TLS still checks the server's own name


def test_runner_translates_hosts_ports_and_volumes(tmp_path: Path) -> None:
    project = load(COMPOSE / "compose.yaml", {"FEDGE_EDGES": "2"})
    runner = ComposeRunner(project, tmp_path)
    fleet, enroll = runner.ports["server"][9092], runner.ports["server"][9093]
    assert fleet != enroll
    edge, server = project.services["edge"], project.services["server"]
    t1 = runner.translate(
        edge, 1, "--server server:9092 --token $(cat /tokens/edge-1.token) --ca=/trust/ca.pem"
    )
    assert t1 == (
        f"--server 127.0.0.1:{fleet} --token $(cat {tmp_path}/volumes/tokens/edge-1.token) "
        f"--ca={tmp_path}/volumes/trust/ca.pem"
    )
    # anonymous volumes are per replica; named volumes shared
    assert (
        runner.translate(edge, 1, "/var/lib/fedge/tls.pem")
        == f"{tmp_path}/containers/edge-1/var/lib/fedge/tls.pem"
    )
    assert runner.translate(edge, 2, "/var/lib/fedge") == f"{tmp_path}/containers/edge-2/var/lib/fedge"
    # a service's own listen address and loopback; names without ports, and look-alikes, stay
    assert runner.translate(server, 1, "--address=0.0.0.0:9092") == f"--address=127.0.0.1:{fleet}"
    assert runner.translate(server, 1, "127.0.0.1:9093") == f"127.0.0.1:{enroll}"
    for same in ("--host server", "myserver:9092", "server:1234", "/pki2/x", "/opt/pki", "edge-{n}"):
        assert runner.translate(server, 1, same) == same
    assert runner.translate(server, 1, "--pki-dir=/pki") == f"--pki-dir={tmp_path}/volumes/pki"
    env = runner._env(edge, 2)
    assert env["FEDGE_REPLICA"] == "2" and env["FEDGE_REPLICA"] != edge.environment["FEDGE_REPLICA"]
    assert not any(k.startswith("FEDGE_") and k != "FEDGE_REPLICA" for k in env)  # no host leakage


def test_dockerfile_targets_and_healthchecks_match_compose() -> None:
    text = (COMPOSE / "Dockerfile").read_text()
    stages = re.findall(r"^FROM \S+ AS (\w+)", text, re.MULTILINE)
    assert {"server", "edge"} <= set(stages)
    project = load(COMPOSE / "compose.yaml", {})
    for target in ("server", "edge"):
        stage = text.split(f" AS {target}\n", 1)[1].split("\nFROM ", 1)[0]
        assert re.search(r"^USER fedge$", stage, re.MULTILINE), f"{target} must not run as root"
        cmd = re.search(r"HEALTHCHECK .*?CMD (\[.*?\])", stage, re.DOTALL)
        assert cmd, f"{target} has no HEALTHCHECK"
        check = project.services[target].healthcheck
        assert check is not None and json.loads(cmd.group(1)) == check.argv
    # The context is copied whole (`COPY . /src/`); the ignore file lets in only what the install
    # needs, identically for BuildKit (compose/Dockerfile.dockerignore) and the legacy builder.
    assert re.findall(r"^COPY (?!--from)(.+)$", text, re.MULTILINE) == [". /src/"]
    ignore = (COMPOSE / "Dockerfile.dockerignore").read_text()
    assert ignore == (REPO / ".dockerignore").read_text()
    rules = [line for line in ignore.splitlines() if line and not line.startswith("#")]
    assert rules[0] == "*" and {"!pyproject.toml", "!README.md", "!constraints.txt", "!fedge/"} <= set(rules)


def _stages(text: str) -> dict[str, str]:
    parts = re.split(r"^FROM (\S+) AS (\w+)\n", text, flags=re.MULTILINE)
    return {
        name: f"FROM {base}\n{body}"
        for base, name, body in zip(parts[1::3], parts[2::3], parts[3::3], strict=True)
    }


def test_dockerfile_builds_on_engine_20_10_from_any_base_and_keeps_builds_out_of_the_images() -> None:
    text = (COMPOSE / "Dockerfile").read_text()
    assert not re.search(r"^#\s*syntax\s*=", text, re.MULTILINE | re.IGNORECASE)  # no frontend pull
    assert not re.search(r"^HEALTHCHECK .*--start-interval", text, re.MULTILINE)  # Engine < 25 refuses it
    assert re.search(r"^ARG BASE_IMAGE=python:\$\{PYTHON_VERSION\}-slim-bookworm$", text, re.MULTILINE)
    stages = _stages(text)
    assert stages["build"].startswith("FROM ${BASE_IMAGE}\n") and stages["runtime"].startswith(
        "FROM ${BASE_IMAGE}\n"
    )
    for arg in ("TORCH_INDEX_URL", "PIP_INDEX_URL", "PIP_FIND_LINKS", "PIP_NO_INDEX"):
        assert re.search(rf"^ARG {arg}\b", stages["build"], re.MULTILINE), f"no build argument {arg}"
    for target in ("server", "edge"):
        final = stages[target]
        assert final.startswith("FROM runtime\n"), f"{target} must not grow from the build stage"
        assert "pip" not in final and "ARG " not in final, f"{target} must not install or take pip settings"
        # the 1.3 GB environment arrives last: on copying storage drivers every later step re-copies it
        steps = [line.split()[0] for line in final.splitlines() if re.match(r"^[A-Z]+ ", line)]
        assert steps[-1] == "COPY" and final.rstrip().endswith(
            "COPY --from=build /opt/fedge-venv /opt/fedge-venv"
        )


def test_replica_number_from_env_or_container_name() -> None:
    assert replica.replica_number({"FEDGE_REPLICA": "4"}, lambda: "") == 4
    assert replica.replica_number({"FEDGE_REPLICA": ""}, lambda: "fedge-edge-3.fedge_default") == 3
    assert replica.replica_number({}, lambda: "fedge_edge_12") == 12
    with pytest.raises(FedgeError, match="cannot tell which replica"):
        replica.replica_number({}, lambda: "a1b2c3d4e5f6")
    with pytest.raises(FedgeError, match="not a replica number"):
        replica.replica_number({"FEDGE_REPLICA": "0"}, lambda: "")
    assert replica.expand(["--name", "edge-{n}", "partition-id={index}"], 3) == [
        "--name",
        "edge-3",
        "partition-id=2",
    ]


def test_replica_entry_refuses_more_replicas_than_configured(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FEDGE_REPLICA", "4")
    with pytest.raises(SystemExit) as exit_:
        replica.main(["--replicas", "3", "--", "true"])
    assert exit_.value.code == 2
    assert "replica 4 but only 3" in capsys.readouterr().err


def test_container_name_from_a_ptr_query_not_etc_hosts(tmp_path: Path) -> None:
    """Docker's /etc/hosts maps the container's address to its id; its DNS answers with the name."""
    dns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dns.bind(("127.0.0.1", 0))
    dns.settimeout(5)
    asked: list[bytes] = []

    def answer() -> None:
        query, peer = dns.recvfrom(512)
        asked.append(query)
        name = b"\x0cfedge-edge-3\x0dfedge_default\x00"
        rr = (
            b"\xc0\x0c" + struct.pack("!HHIH", 12, 1, 600, len(name)) + name
        )  # owner: pointer to the question
        dns.sendto(query[:2] + struct.pack("!5H", 0x8180, 1, 1, 0, 0) + query[12:] + rr, peer)

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("search fedge_default\nnameserver 127.0.0.1\noptions ndots:0\n")
    name = replica.container_name(str(resolv), dns.getsockname()[1])
    thread.join(5)
    dns.close()
    assert name == "fedge-edge-3.fedge_default"
    assert b"\x07in-addr\x04arpa\x00\x00\x0c\x00\x01" in asked[0]  # a PTR question for our address
    assert replica.replica_number({}, lambda: name) == 3
    assert replica.container_name(str(tmp_path / "missing.conf")) == ""
