"""Read a Compose file the way Docker Compose does: schema check, ``${VAR}`` interpolation, services.

Why fedge parses compose itself: ``fedge simulate --from-compose`` runs every service's *own*
command line as local processes (:mod:`fedge.sim.compose_run`), so the shipped
``compose/compose.yaml`` is exercised for real in the test suite on machines without a Docker
engine. Validation uses the Compose Specification's JSON schema, vendored as data
(``fedge/sim/data/compose-spec.json``; origin in ``fedge/sim/data/README.md``).

Only what a local run needs is modelled: command/entrypoint, environment, volumes, ports,
``depends_on`` conditions, healthchecks, replicas and profiles. Keys that only matter inside
Docker (image, build, cap_add, restart, ...) are validated and otherwise ignored.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from fedge.errors import FedgeError

SCHEMA = Path(__file__).with_name("data") / "compose-spec.json"
_NAME = re.compile(r"[_a-zA-Z][_a-zA-Z0-9]*")
_EXPR = re.compile(r"([_a-zA-Z][_a-zA-Z0-9]*)(?:(:?[-?+])(.*))?", re.DOTALL)
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)")
_DURATION_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass(frozen=True)
class Mount:
    """One entry of a service's ``volumes``: a named volume, a bind mount or an anonymous volume."""

    target: str
    kind: str  # "volume", "bind" or "anonymous"
    source: str = ""
    read_only: bool = False


@dataclass(frozen=True)
class Healthcheck:
    """``healthcheck``: ``argv`` is the command (``CMD-SHELL`` becomes ``sh -c``); times in seconds."""

    argv: list[str]
    interval: float = 30.0
    timeout: float = 30.0
    retries: int = 3
    start_period: float = 0.0
    start_interval: float = 5.0


@dataclass
class Service:
    """What running one service's containers needs."""

    name: str
    argv: list[str]
    environment: dict[str, str] = field(default_factory=dict)
    mounts: list[Mount] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)  # container ports (expose + ports targets)
    depends_on: dict[str, str] = field(default_factory=dict)  # service → condition
    healthcheck: Healthcheck | None = None
    replicas: int = 1
    profiles: list[str] = field(default_factory=list)
    stop_grace_period: float = 10.0


@dataclass
class Project:
    """A loaded compose file."""

    name: str
    path: Path
    services: dict[str, Service]
    volumes: list[str]


@cache
def _schema() -> dict[str, Any]:
    return json.loads(SCHEMA.read_text(encoding="utf-8"))


def validate(doc: Any, source: str = "compose file") -> None:
    """Check ``doc`` against the Compose Specification schema; every violation in one error."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(_schema())
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = [f"{e.json_path}: {e.message}" for e in errors[:10]]
        raise FedgeError(
            f"{source} does not follow the Compose Specification:\n  " + "\n  ".join(lines),
            "fix the keys shown (schema: fedge/sim/data/compose-spec.json)",
        )


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's variable syntax: ``$VAR``, ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``,
    ``${VAR:?error}``, ``${VAR?error}``, ``${VAR:+alt}``, ``${VAR+alt}`` (nestable), ``$$`` → ``$``."""
    out: list[str] = []
    i = 0
    while i < len(text):
        j = text.find("$", i)
        if j < 0:
            out.append(text[i:])
            break
        out.append(text[i:j])
        nxt = text[j + 1 : j + 2]
        if nxt == "$":
            out.append("$")
            i = j + 2
        elif nxt == "{":
            end = _closing_brace(text, j + 2)
            out.append(_expand(text[j + 2 : end], env))
            i = end + 1
        elif m := _NAME.match(text, j + 1):
            out.append(env.get(m.group(0), ""))
            i = m.end()
        else:
            out.append("$")
            i = j + 1
    return "".join(out)


def _closing_brace(text: str, start: int) -> int:
    depth, i = 1, start
    while i < len(text):
        if text.startswith("$$", i):
            i += 2
            continue
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise FedgeError(f"unclosed '${{' in {text!r}", "close every ${VAR} with '}'")


def _expand(expr: str, env: Mapping[str, str]) -> str:
    m = _EXPR.fullmatch(expr)
    if not m:
        raise FedgeError(
            f"invalid interpolation '${{{expr}}}'", "use ${VAR}, ${VAR:-default} or ${VAR:?error}"
        )
    name, op, arg = m.group(1), m.group(2) or "", m.group(3) or ""
    value = env.get(name)
    present = value is not None and (value != "" or not op.startswith(":"))
    if not op:
        return value or ""
    if op in (":-", "-"):
        return value if present and value is not None else interpolate(arg, env)
    if op in (":?", "?"):
        if not present or value is None:
            raise FedgeError(f"required variable {name} is not set: {interpolate(arg, env)}", f"set {name}")
        return value
    return interpolate(arg, env) if present else ""  # ":+" and "+"


def interpolate_doc(node: Any, env: Mapping[str, str]) -> Any:
    """Every string of a parsed compose document interpolated with ``env``."""
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [interpolate_doc(v, env) for v in node]
    if isinstance(node, dict):
        return {k: interpolate_doc(v, env) for k, v in node.items()}
    return node


def read_dotenv(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines of a project's ``.env`` (comments, blank lines and quotes handled)."""
    values: dict[str, str] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                key, _, value = line.removeprefix("export ").partition("=")
                values[key.strip()] = value.strip().strip("'\"")
    return values


def load(path: str | Path, env: Mapping[str, str]) -> Project:
    """Parse, interpolate with ``env`` and validate a compose file, as ``docker compose config`` would."""
    import yaml

    file = Path(path)
    if not file.is_file():
        raise FedgeError(f"compose file not found: {file}", "pass the path of a compose.yaml")
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise FedgeError(
            f"{file} is not valid YAML: {exc}", "fix the YAML syntax at the line shown"
        ) from None
    if not isinstance(raw, dict):
        raise FedgeError(f"{file} holds no compose mapping", "start it with `services:`")
    doc = interpolate_doc(raw, env)
    validate(doc, str(file))
    services = {name: _service(name, spec, doc["services"]) for name, spec in doc.get("services", {}).items()}
    for svc in services.values():
        unknown = sorted(set(svc.depends_on) - set(services))
        if unknown:
            raise FedgeError(f"service {svc.name} depends on unknown {', '.join(unknown)}", "fix depends_on")
    # Compose's order: the file's `name:`, else COMPOSE_PROJECT_NAME (e.g. from .env), else the folder.
    name = str(doc.get("name") or env.get("COMPOSE_PROJECT_NAME") or file.resolve().parent.name)
    return Project(name, file.resolve(), services, list(doc.get("volumes") or {}))


def _service(name: str, spec: dict[str, Any], all_specs: dict[str, Any]) -> Service:
    spec = _extended(name, spec, all_specs, set())
    argv = [*_words(spec.get("entrypoint")), *_words(spec.get("command"))]
    if not argv:
        raise FedgeError(
            f"service {name} has no command", "give it a `command:` (images' defaults are not known locally)"
        )
    deps = spec.get("depends_on") or {}
    if isinstance(deps, list):
        deps = {d: {"condition": "service_started"} for d in deps}
    deploy = spec.get("deploy") or {}
    return Service(
        name=name,
        argv=argv,
        environment=_environment(spec.get("environment")),
        mounts=[_mount(v) for v in spec.get("volumes") or []],
        ports=sorted({*_ports(spec.get("ports") or []), *(_port(p) for p in spec.get("expose") or [])}),
        depends_on={d: str((c or {}).get("condition", "service_started")) for d, c in deps.items()},
        healthcheck=_healthcheck(spec.get("healthcheck")),
        replicas=int(deploy.get("replicas", spec.get("scale", 1))),
        profiles=list(spec.get("profiles") or []),
        stop_grace_period=duration(spec.get("stop_grace_period", "10s")),
    )


def _extended(name: str, spec: dict[str, Any], all_specs: dict[str, Any], seen: set[str]) -> dict[str, Any]:
    """Same-file ``extends``: the base's keys, overridden key by key by the service's own."""
    ext = spec.get("extends")
    if ext is None:
        return spec
    base = ext if isinstance(ext, str) else ext.get("service", "")
    if not isinstance(ext, str) and ext.get("file"):
        raise FedgeError(f"service {name} extends a service in another file", "inline it for --from-compose")
    if base not in all_specs or base in seen:
        raise FedgeError(f"service {name} extends unknown or circular service {base!r}", "fix `extends`")
    merged = {**_extended(base, all_specs[base], all_specs, seen | {name}), **spec}
    merged.pop("extends")
    return merged


def _words(value: Any) -> list[str]:
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def _environment(value: Any) -> dict[str, str]:
    if isinstance(value, dict):
        return {k: "" if v is None else _scalar(v) for k, v in value.items()}
    env = {}
    for item in value or []:
        key, sep, val = str(item).partition("=")
        env[key] = val if sep else ""
    return env


def _scalar(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _mount(value: Any) -> Mount:
    if isinstance(value, dict):
        kind, source = str(value.get("type", "volume")), str(value.get("source", ""))
        kind = "anonymous" if kind == "volume" and not source else kind
        return Mount(str(value["target"]), kind, source, bool(value.get("read_only", False)))
    parts = str(value).split(":")
    if len(parts) == 1:
        return Mount(parts[0], "anonymous")
    source, target, mode = parts[0], parts[1], parts[2] if len(parts) > 2 else ""
    kind = "bind" if source.startswith((".", "/", "~")) else "volume"
    return Mount(target, kind, source, "ro" in mode.split(","))


def _ports(values: list[Any]) -> list[int]:
    out = []
    for value in values:
        if isinstance(value, dict):
            out.append(int(value["target"]))
        else:
            out.append(_port(str(value).rsplit(":", 1)[-1]))
    return out


def _port(value: Any) -> int:
    text = str(value).split("/")[0]
    if not text.isdigit():
        raise FedgeError(f"port {value!r} is not a single port", "use one port per entry (no ranges)")
    return int(text)


def _healthcheck(value: Any) -> Healthcheck | None:
    if not value or value.get("disable") in (True, "true") or "test" not in value:
        return None
    test = value["test"]
    argv = ["sh", "-c", test] if isinstance(test, str) else list(test)
    if argv and argv[0] == "NONE":
        return None
    if argv and argv[0] == "CMD-SHELL":
        argv = ["sh", "-c", " ".join(argv[1:])]
    elif argv and argv[0] == "CMD":
        argv = argv[1:]
    interval = duration(value.get("interval", "30s"))
    return Healthcheck(
        argv=argv,
        interval=interval,
        timeout=duration(value.get("timeout", "30s")),
        retries=int(value.get("retries", 3)),
        start_period=duration(value.get("start_period", "0s")),
        start_interval=duration(value.get("start_interval", "5s")),
    )


def duration(value: Any) -> float:
    """Compose durations (``1m30s``, ``500ms``, ``10s``; a bare number is seconds) in seconds."""
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip()
    parts = _DURATION.findall(text)
    if not parts or "".join(a + b for a, b in parts) != text:
        raise FedgeError(f"invalid duration {value!r}", "use e.g. 10s, 1m30s or 500ms")
    return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
