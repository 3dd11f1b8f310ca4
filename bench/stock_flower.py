"""Run ``bench/flower_app`` on a real, local stock Flower 1.41 deployment.

Starts ``flower-superlink`` and N ``flower-supernode`` processes on free loopback
ports, submits the app with ``flwr run``, waits for the ServerApp's timings file and
tears every process down again -- including the SuperExec that SuperLink starts in
its *own* session (``start_new_session=True``), which a plain ``killpg`` would miss.

Isolation: every process gets its own ``FLWR_HOME`` under ``workdir`` (CLI config,
installed FABs, update-check cache), so ``~/.flwr`` is never read or written, and
concurrent SuperNodes never race on extracting the same FAB.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import psutil

APP_DIR = Path(__file__).resolve().parent / "flower_app"
CONNECTION = "bench"  # SuperLink connection name written into the CLI's config.toml
BIN = Path(sys.executable).parent  # flwr's entry points live next to the interpreter


class StockFlowerError(RuntimeError):
    """The stock Flower deployment failed; the message carries the relevant log tail."""


def free_ports(n: int) -> list[int]:
    """Ask the kernel for ``n`` distinct free loopback ports (held open together)."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StockFlowerError(f"process exited with {proc.returncode}:\n{_tail(log)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise StockFlowerError(f"port {port} not listening after {timeout_s:.0f}s:\n{_tail(log)}")


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _base_env() -> dict[str, str]:
    env = dict(os.environ)
    # SuperLink/SuperNode spawn `flower-superexec`, `flwr-serverapp`, `flwr-clientapp`
    # by bare name, so the venv's bin must be on PATH even when it is not activated.
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["FLWR_TELEMETRY_ENABLED"] = "0"
    env["FLWR_DISABLE_UPDATE_CHECK"] = "1"  # else every process calls api.flower.ai
    env["PYTHONUNBUFFERED"] = "1"  # keep logs complete if we have to kill a process
    return env


def _die_with_parent() -> None:
    """Linux: SIGTERM the child if the bench dies, even by SIGKILL (no finally then).

    Best effort past that: SuperExec and app processes poll their parent's PID, but
    where PID 1 does not reap zombies (as in these VMs) a dead parent still "exists",
    so ClientApp processes in flight can linger after a SIGKILL of the bench.
    """
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """Turn SIGTERM into SystemExit so ``finally`` tears the deployment down."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _Deployment:
    """Owns every process it starts; ``close()`` is idempotent and kills descendants too."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.logs = workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.procs: list[subprocess.Popen[bytes]] = []
        self._files: list[IO[bytes]] = []

    def spawn(self, name: str, cmd: list[str], home: Path) -> tuple[subprocess.Popen[bytes], Path]:
        home.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"{name}.log"
        out = log.open("wb")
        self._files.append(out)
        env = {**_base_env(), "FLWR_HOME": str(home)}
        # Own session/process group per component, so teardown can signal the whole group.
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=self.workdir,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        self.procs.append(proc)
        return proc, log

    def rss_mb(self, procs: list[subprocess.Popen[bytes]]) -> float:
        """Resident memory of ``procs`` and all their descendants (SuperExec, app processes)."""
        total = 0
        for p in (q for proc in procs for q in _family(proc.pid)):
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        return total / 2**20

    def close(self, grace_s: float = 5.0) -> None:
        # Collect descendants before signalling: once a parent dies its children are
        # re-parented and can no longer be found through it. SuperLink's SuperExec
        # (own session) is only reachable this way.
        victims: list[psutil.Process] = []
        for proc in reversed(self.procs):  # SuperNodes before SuperLink
            victims += _family(proc.pid)
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for p in victims:
            with contextlib.suppress(psutil.Error):
                p.terminate()
        _, alive = psutil.wait_procs(victims, timeout=grace_s)
        for p in alive:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(alive, timeout=grace_s)
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=grace_s)  # reap our direct children
        for f in self._files:
            f.close()
        self.procs.clear()
        self._files.clear()


def _family(pid: int) -> list[psutil.Process]:
    """``pid`` and all its live descendants ([] if it is gone)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def _flwr(args: list[str], home: Path, timeout_s: float) -> str:
    """Run one ``flwr`` CLI command against the bench connection; return stdout."""
    res = subprocess.run(
        [str(BIN / "flwr"), *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env={**_base_env(), "FLWR_HOME": str(home)},
        stdin=subprocess.DEVNULL,
    )
    if res.returncode != 0:
        cmd = " ".join(args)
        raise StockFlowerError(f"flwr {cmd} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return res.stdout


def _json_from(stdout: str) -> dict[str, Any]:
    """``--format json`` output, ignoring anything the CLI printed around it."""
    start, end = stdout.find("{"), stdout.rfind("}")
    if start < 0 or end < start:
        raise StockFlowerError(f"no JSON in flwr output:\n{stdout}")
    parsed: dict[str, Any] = json.loads(stdout[start : end + 1])
    return parsed


def _done(timings: Path) -> bool:
    """The ServerApp writes the file atomically and sets ``done`` after its last round."""
    return timings.exists() and bool(json.loads(timings.read_text()).get("done"))


def _run_status(run_id: str, home: Path) -> str:
    out = _json_from(_flwr(["ls", CONNECTION, "--run-id", run_id, "--format", "json"], home, 60))
    runs = out.get("runs") or [{}]
    return str(runs[0].get("status", "unknown"))


def _run_log(run_id: str, home: Path, lines: int = 40) -> str:
    """Tail of the run's ServerApp log (it is shipped to SuperLink, not to its stdout)."""
    try:
        out = _flwr(["log", run_id, CONNECTION, "--show"], home, 60)
    except (StockFlowerError, subprocess.TimeoutExpired) as exc:
        return f"(no run log: {exc})"
    return "\n".join(out.splitlines()[-lines:])


def run_stock_flower(
    num_nodes: int = 10,
    num_rounds: int = 3,
    workdir: Path | str = "runs/stock-flower",
    *,
    timeout_s: float = 900.0,
    stats: dict[str, float] | None = None,
    overrides: dict[str, str | int | float | bool] | None = None,
) -> list[dict[str, Any]]:
    """Run the benchmark app on stock Flower; return the ServerApp's per-round timings.

    Each dict has ``round``, ``wall_s``, ``max_client_compute_s``,
    ``sum_client_compute_s``, ``n_replies`` (see ``bench/flower_app/app.py``).
    If ``stats`` is given it is filled with start-up/run durations (s) and the
    SuperNodes' resident memory (MB, including SuperExec and ClientApp processes).
    ``overrides`` sets further keys of the app's run config (e.g. ``local-steps``).
    """
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    stats = {} if stats is None else stats
    dep = _Deployment(workdir)
    with _sigterm_raises():
        try:
            return _run(dep, num_nodes, num_rounds, workdir, timeout_s, stats, overrides)
        finally:
            dep.close()


def _run(
    dep: _Deployment,
    num_nodes: int,
    num_rounds: int,
    workdir: Path,
    timeout_s: float,
    stats: dict[str, float],
    overrides: dict[str, str | int | float | bool] | None,
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    timings = workdir / "timings.json"
    timings.unlink(missing_ok=True)
    cli_home = workdir / "home-cli"
    t0 = time.monotonic()
    link_port, *node_ports = free_ports(1 + num_nodes)
    # One HTTP port serves Fleet, Control and Runtime APIs in 1.41.
    link, link_log = dep.spawn(
        "superlink",
        [
            str(BIN / "flower-superlink"),
            "--insecure",
            "--disable-runtime-dependency-installation",
            "--host",
            "127.0.0.1",
            "--port",
            str(link_port),
        ],
        workdir / "home-superlink",
    )
    _wait_port(link_port, link, link_log, timeout_s=60)
    nodes = []
    for i, port in enumerate(node_ports):
        proc, log = dep.spawn(
            f"supernode-{i}",
            # --port is the SuperNode's own Runtime API (ClientApp <-> SuperNode);
            # it defaults to 9094, so N nodes on one host need N distinct ports.
            [
                str(BIN / "flower-supernode"),
                "--insecure",
                "--superlink",
                f"127.0.0.1:{link_port}",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            workdir / f"home-supernode-{i}",
        )
        nodes.append((proc, log, port))
    for proc, log, port in nodes:
        _wait_port(port, proc, log, timeout_s=60)
    stats["startup_s"] = time.monotonic() - t0
    stats["supernodes_rss_mb_idle"] = dep.rss_mb([p for p, _, _ in nodes])

    cli_home.mkdir(parents=True, exist_ok=True)
    (cli_home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n'
        f'[superlink.{CONNECTION}]\naddress = "127.0.0.1:{link_port}"\ninsecure = true\n'
    )
    config = {
        "num-server-rounds": num_rounds,
        "min-clients": num_nodes,
        "timings-path": str(timings),
        **(overrides or {}),
    }
    # `--run-config` takes TOML values; JSON scalars are valid TOML scalars.
    run_config = " ".join(f"{k}={json.dumps(v)}" for k, v in config.items())
    t_run = time.monotonic()
    out = _json_from(
        _flwr(
            ["run", str(APP_DIR), CONNECTION, "--format", "json", "--run-config", run_config],
            cli_home,
            timeout_s=120,
        )
    )
    run_id = str(out.get("run-id"))
    if not out.get("success") or run_id == "None":
        raise StockFlowerError(f"flwr run did not start a run: {out}")

    peak = 0.0
    next_status = time.monotonic() + 30
    while True:
        peak = max(peak, dep.rss_mb([p for p, _, _ in nodes]))
        if _done(timings):
            break
        for proc, log, _ in [(link, link_log, 0), *nodes]:
            if proc.poll() is not None:
                raise StockFlowerError(f"{log.stem} exited with {proc.returncode}:\n{_tail(log)}")
        now = time.monotonic()
        if now > deadline:
            raise StockFlowerError(f"run {run_id} not done after {timeout_s:.0f}s:\n{_tail(link_log)}")
        if now > next_status:  # rare: each `flwr` call costs ~1 CPU-second
            next_status = now + 30
            status = _run_status(run_id, cli_home)
            if status.startswith("finished") and not _done(timings):
                raise StockFlowerError(f"run {run_id} ended as {status}:\n{_run_log(run_id, cli_home)}")
        time.sleep(0.5)
    stats["run_s"] = time.monotonic() - t_run
    stats["supernodes_rss_mb_peak"] = peak
    rounds: list[dict[str, Any]] = json.loads(timings.read_text())["rounds"]
    return rounds


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workdir", default="runs/stock-flower")
    a = ap.parse_args()
    info: dict[str, float] = {}
    for r in run_stock_flower(a.nodes, a.rounds, a.workdir, stats=info):
        print(json.dumps(r))
    print(json.dumps(info))
