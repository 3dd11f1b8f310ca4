"""``fedge simulate --from-compose``: a compose file's services as local processes.

Why: the compose file is a product (users deploy with it), yet no Docker engine exists where
fedge is tested. So this runs each service's *own* command line, unchanged apart from what
Docker itself would provide, and a broken command in ``compose/compose.yaml`` fails the tests:

- **network**: service names resolve to 127.0.0.1 and every container port gets its own free
  local port — ``server:9092`` in any argument becomes ``127.0.0.1:<port>``, and so does the
  service's own ``0.0.0.0:9092`` / ``127.0.0.1:9092``;
- **volumes**: a named volume is ``<workdir>/volumes/<name>``, an anonymous one a directory of
  its container, a bind mount its host path; mount paths in arguments are rewritten to these;
- **containers**: replica ``n`` of a service runs in ``<workdir>/containers/<service>-<n>`` with
  the service's ``environment``, ``FEDGE_REPLICA=n`` (what the container name tells
  :mod:`fedge.sim.replica` under Docker) and a clean environment (no host ``FEDGE_*``);
- **order**: ``depends_on`` conditions are honoured: ``service_started``,
  ``service_completed_successfully`` (one-shots), ``service_healthy`` (the healthcheck command
  itself is run, at ``start_interval`` during ``start_period``).

The run service (``run``, in its own profile) is started last, its output streamed, and its exit
code is the simulation's. Everything is torn down afterwards, also on failure and Ctrl-C.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from fedge.errors import FedgeError
from fedge.server.run_cli import RunFailed
from fedge.sim.compose import Project, Service, load, read_dotenv
from fedge.sim.local import _die_with_parent, _signal_group

_PASS_ENV = ("HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "PYTHONPATH")
_IMAGE_ENV = {"PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1", "FLWR_TELEMETRY_ENABLED": "0"}
_LOCAL_HOSTS = ("0.0.0.0", "127.0.0.1", "localhost", "[::]")


@dataclass
class Container:
    """One running replica."""

    service: Service
    number: int
    proc: subprocess.Popen[bytes]
    log: Path
    root: Path

    @property
    def label(self) -> str:
        return f"{self.service.name}-{self.number}"


class ComposeRunner:
    """Start services in dependency order; tear everything down on exit (a context manager)."""

    def __init__(self, project: Project, workdir: Path, scale: dict[str, int] | None = None) -> None:
        self.project, self.workdir = project, workdir
        self.scale = {name: svc.replicas for name, svc in project.services.items()} | (scale or {})
        self.ports = {name: {p: _free_port() for p in svc.ports} for name, svc in project.services.items()}
        for name, ports in self.ports.items():
            if ports and self.scale[name] > 1:
                raise FedgeError(
                    f"service {name} publishes ports and has {self.scale[name]} replicas",
                    "only unscaled services may have ports in --from-compose",
                )
        self.containers: list[Container] = []
        self.started: set[str] = set()
        self._hosts = re.compile(
            r"(?<![\w.-])("
            + "|".join(map(re.escape, sorted([*project.services, *_LOCAL_HOSTS], key=len, reverse=True)))
            + r"):(\d+)\b"
        )

    def __enter__(self) -> ComposeRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    # -- translation: what Docker's network and volumes would provide -------------------------
    def volume_dir(self, svc: Service, number: int, target: str) -> Path:
        """The local directory standing in for ``target`` inside replica ``number`` of ``svc``."""
        for m in svc.mounts:
            if m.target == target:
                if m.kind == "volume":
                    return self.workdir / "volumes" / m.source
                if m.kind == "bind":
                    return (self.project.path.parent / m.source).expanduser().resolve()
                return self._root(svc, number) / target.lstrip("/")
        raise KeyError(target)

    def translate(self, svc: Service, number: int, text: str) -> str:
        """Rewrite host:port pairs and mount paths in one argument (or a whole ``sh -c`` script)."""

        def host(m: re.Match[str]) -> str:
            name, port = m.group(1), int(m.group(2))
            owner = svc.name if name in _LOCAL_HOSTS else name
            mapped = self.ports.get(owner, {}).get(port)
            return f"127.0.0.1:{mapped}" if mapped else m.group(0)

        text = self._hosts.sub(host, text)
        targets = sorted((m.target for m in svc.mounts), key=len, reverse=True)
        if targets:
            paths = re.compile(
                r"(?<![\w.$/-])(" + "|".join(map(re.escape, targets)) + r")(?=$|[/\s'\"=:;,)}])"
            )
            text = paths.sub(lambda m: str(self.volume_dir(svc, number, m.group(1))), text)
        return text

    def _root(self, svc: Service, number: int) -> Path:
        return self.workdir / "containers" / f"{svc.name}-{number}"

    def _env(self, svc: Service, number: int) -> dict[str, str]:
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "/usr/bin:/bin")])
        env = {k: os.environ[k] for k in _PASS_ENV if k in os.environ} | _IMAGE_ENV | {"PATH": path}
        env |= {k: self.translate(svc, number, v) for k, v in svc.environment.items()}
        return env | {"FEDGE_REPLICA": str(number), "HOSTNAME": f"{self.project.name}-{svc.name}-{number}"}

    # -- lifecycle ----------------------------------------------------------------------------
    def up(self, names: list[str]) -> None:
        """Start ``names`` and, first, everything they depend on (waiting on each condition)."""
        for name in names:
            self._start_with_deps(name, ())

    def _start_with_deps(self, name: str, chain: tuple[str, ...]) -> None:
        if name in self.started:
            return
        if name in chain:
            raise FedgeError(f"depends_on cycle: {' → '.join([*chain, name])}", "break the cycle")
        svc = self.project.services[name]
        for dep, condition in svc.depends_on.items():
            self._start_with_deps(dep, (*chain, name))
            self._wait(dep, condition)
        self.start(svc)

    def start(self, svc: Service, output: int | None = None) -> list[Container]:
        """Start every replica of ``svc`` (stdout to ``<workdir>/logs/<service>-<n>.log``, or ``output``)."""
        self.started.add(svc.name)
        out = []
        for number in range(1, self.scale[svc.name] + 1):
            root = self._root(svc, number)
            root.mkdir(parents=True, exist_ok=True)
            for m in svc.mounts:
                self.volume_dir(svc, number, m.target).mkdir(parents=True, exist_ok=True)
            log = self.workdir / "logs" / f"{svc.name}-{number}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            with open(log, "ab") as sink:
                proc = subprocess.Popen(
                    [self.translate(svc, number, a) for a in svc.argv],
                    stdout=sink if output is None else output,
                    stderr=sink if output is None else subprocess.STDOUT,
                    env=self._env(svc, number),
                    cwd=root,
                    start_new_session=True,
                    preexec_fn=_die_with_parent,
                )
            out.append(Container(svc, number, proc, log, root))
        self.containers += out
        return out

    def _wait(self, name: str, condition: str) -> None:
        if condition == "service_completed_successfully":
            for c in self._of(name):
                code = c.proc.wait()
                if code != 0:
                    raise FedgeError(f"one-shot service {name} exited with {code}", f"see {c.log}")
        elif condition == "service_healthy":
            for c in self._of(name):
                self._wait_healthy(c)
        elif condition != "service_started":
            raise FedgeError(f"unknown depends_on condition {condition!r}", "use service_started/healthy/…")

    def _wait_healthy(self, c: Container) -> None:
        """Probe like Docker: failures inside ``start_period`` do not count; ``retries`` in a row fail."""
        check = c.service.healthcheck
        if check is None:
            raise FedgeError(
                f"{c.service.name} has no healthcheck to wait for", "add one, or service_started"
            )
        started, failures = time.monotonic(), 0
        argv = [self.translate(c.service, c.number, a) for a in check.argv]
        while True:
            if c.proc.poll() is not None:
                raise FedgeError(
                    f"{c.label} exited with {c.proc.returncode} before it was healthy",
                    f"see {c.log}",
                )
            try:
                probe = subprocess.run(
                    argv,
                    env=self._env(c.service, c.number),
                    cwd=c.root,
                    capture_output=True,
                    text=True,
                    timeout=check.timeout,
                )
                if probe.returncode == 0:
                    return
                why = (probe.stderr or probe.stdout).strip().splitlines()[-1:] or [f"exit {probe.returncode}"]
            except subprocess.TimeoutExpired:
                why = [f"no answer within {check.timeout:g} s"]
            starting = time.monotonic() - started < check.start_period
            failures += 0 if starting else 1
            if failures >= check.retries:
                raise FedgeError(f"{c.label} never became healthy: {why[0]}", f"see {c.log}")
            time.sleep(check.start_interval if starting else check.interval)

    def _of(self, name: str) -> list[Container]:
        return [c for c in self.containers if c.service.name == name]

    def run_foreground(self, name: str, console: Console) -> int:
        """Start ``name`` (after its dependencies), stream its output, return its exit code."""
        svc = self.project.services[name]
        for dep, condition in svc.depends_on.items():
            self._start_with_deps(dep, (name,))
            self._wait(dep, condition)
        (c,) = self.start(svc, output=subprocess.PIPE)
        assert c.proc.stdout is not None
        with open(c.log, "ab") as log:
            for line in c.proc.stdout:
                log.write(line)
                console.print(f"[dim]{name} |[/dim] {line.decode(errors='replace').rstrip()}", soft_wrap=True)
                self._check_alive(exclude=c)
        return c.proc.wait()

    def _check_alive(self, exclude: Container) -> None:
        """A long-running container that died is an error (one-shots have been waited on)."""
        for c in self.containers:
            if c is not exclude and c.proc.poll() not in (None, 0):
                raise FedgeError(f"{c.label} exited with {c.proc.returncode}", f"see {c.log}")

    def down(self) -> None:
        """SIGTERM every container (newest first), SIGKILL what outlives its stop_grace_period."""
        procs = list(reversed(self.containers))
        for c in procs:
            _signal_group(c.proc, 15)
        for c in procs:
            try:
                c.proc.wait(timeout=c.service.stop_grace_period)
            except subprocess.TimeoutExpired:
                pass
            _signal_group(c.proc, 9)
            c.proc.wait()
        self.containers.clear()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def simulate_compose(
    path: str,
    variables: dict[str, str],
    scale: dict[str, int],
    workdir: Path,
    console: Console,
    run_service: str = "run",
) -> Path:
    """Run the compose file's federation to the end of one run; returns the server's state volume dir.

    ``variables`` win over the shell environment and the project's ``.env`` (as exported
    variables would for ``docker compose``); ``scale`` is ``--scale``.
    """
    file = Path(path)
    env = read_dotenv(file.parent / ".env") | dict(os.environ) | variables
    project = load(file, env)
    if run_service not in project.services:
        raise FedgeError(
            f"{file} has no '{run_service}' service to launch the run",
            "add a service running `fedge run start` (see compose/compose.yaml)",
        )
    active = [n for n, s in project.services.items() if not s.profiles and n != run_service]
    console.print(f"compose project {project.name}: {', '.join(active)} + {run_service}; workdir {workdir}")
    with ComposeRunner(project, workdir, {k: v for k, v in scale.items() if k in project.services}) as runner:
        runner.up(active)
        code = runner.run_foreground(run_service, console)
        if code != 0:
            raise RunFailed(f"the {run_service} service exited with {code}", f"logs in {workdir / 'logs'}")
    console.print(f"volumes (server state, PKI, tokens) in {workdir / 'volumes'}; logs in {workdir / 'logs'}")
    return workdir / "volumes"
