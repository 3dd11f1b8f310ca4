"""A real federation on this machine: one ``fedge server`` and N ``fedge client`` processes.

The same binaries and flags an operator uses, on 127.0.0.1, so a simulation exercises the
production path. Every child gets its own session so teardown can kill whole process groups;
teardown runs on success, failure and Ctrl-C alike.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from fedge.errors import FedgeError
from fedge.procenv import child_env
from fedge.server.control_client import ControlClient


class LocalFederation:
    """Start/stop a server and daemons as subprocesses (use as a context manager)."""

    def __init__(self, workdir: Path, verbosity: int = 0, secure: bool = True) -> None:
        self.workdir = workdir
        self.verbosity = verbosity
        self.secure = secure
        self.pki_dir = workdir / "pki"
        self.enroll_address = ""
        self.server: subprocess.Popen[bytes] | None = None
        self.daemons: list[subprocess.Popen[bytes]] = []
        self.address = ""

    def __enter__(self) -> LocalFederation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _spawn(self, args: list[str], log_name: str, wrap: Sequence[str] = ()) -> subprocess.Popen[bytes]:
        log = open(self.workdir / log_name, "ab")  # noqa: SIM115 (owned by the child)
        # PYTHONFAULTHANDLER: a crash inside a native library (gRPC, torch) leaves the Python
        # stacks of every thread in the process's log instead of a silent exit.
        env = {**child_env(), "FLWR_TELEMETRY_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
        env["PYTHONFAULTHANDLER"] = "1"
        verbose = ["-" + "v" * self.verbosity] if self.verbosity else []
        return subprocess.Popen(
            # -P: the working directory is not put on sys.path, so a folder there named like a
            # package (a checkout's own fedge/) cannot shadow the installed one.
            [*wrap, sys.executable, "-P", "-m", "fedge", *args, *verbose],
            stdout=log,
            stderr=log,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )

    def start_server(
        self, extra: list[str] | None = None, timeout: float = 60.0, wrap: Sequence[str] = ()
    ) -> str:
        """Start ``fedge server`` on a free loopback port; returns its address."""
        return self.start_server_at("127.0.0.1:0", extra, timeout, wrap)

    def start_server_at(
        self, address: str, extra: list[str] | None = None, timeout: float = 60.0, wrap: Sequence[str] = ()
    ) -> str:
        """Start ``fedge server`` on ``address`` (port 0 = any free port); returns the bound address.

        Secure (the default): a temporary PKI is made on first use, exactly what ``fedge pki init``,
        ``issue-server --host localhost --ip 127.0.0.1`` and ``issue-admin`` make, and the server
        runs mTLS with an enrollment listener. ``wrap`` prefixes the command, as for daemons.
        """
        state = self.workdir / "server"
        state.mkdir(parents=True, exist_ok=True)
        if self.secure:
            self._ensure_pki()
            mode = ["--pki-dir", str(self.pki_dir), "--enroll-address", "127.0.0.1:0"]
        else:
            mode = ["--insecure"]
        files = [state / "address", *([state / "enroll_address"] if self.secure else [])]
        for f in files:
            f.unlink(missing_ok=True)
        args = ["server", "start", "--address", address, "--state-dir", str(state), *mode, *(extra or [])]
        self.server = self._spawn(args, "server.log", wrap)
        deadline = time.monotonic() + timeout
        while not all(f.exists() for f in files):
            if self.server.poll() is not None or time.monotonic() > deadline:
                raise FedgeError(
                    f"the local fedge server did not start ({_outcome(self.server, timeout)})",
                    f"see {self.workdir / 'server.log'}",
                )
            time.sleep(0.05)
        self.address = files[0].read_text().strip()
        if self.secure:
            self.enroll_address = files[1].read_text().strip()
        return self.address

    def _ensure_pki(self) -> None:
        from fedge.security import init_pki, issue_admin, issue_server

        if not (self.pki_dir / "ca.pem").exists():
            init_pki(self.pki_dir)
            issue_server(self.pki_dir, "localhost", ["127.0.0.1"])
            issue_admin(self.pki_dir)

    @property
    def auth(self) -> list[str]:
        """CLI flags that authenticate an admin command against this federation."""
        return ["--admin-dir", str(self.pki_dir)] if self.secure else ["--insecure"]

    def control(self) -> ControlClient:
        """A Control client with this federation's admin credentials."""
        return ControlClient(self.address, admin_dir=self.pki_dir if self.secure else None)

    def enroll(self, name: str, role: str = "device") -> Path:
        """Enroll ``name`` (role ``device`` or ``relay``) through the enrollment listener, fresh token."""
        from fedge.client.tls import enroll
        from fedge.security import create_token

        state = self.workdir / name
        token = create_token(self.pki_dir, name, ttl_seconds=600, role=role)
        enroll(self.enroll_address, (self.pki_dir / "ca.pem").read_bytes(), token, name, state)
        return state

    def start_daemon(
        self, name: str, args: list[str], *, server: str = "", wrap: Sequence[str] = ()
    ) -> subprocess.Popen[bytes]:
        """Start one ``fedge client`` daemon with its own state directory (enrolled first if secure).

        ``server`` replaces the server's address (e.g. an impairment proxy in front of it);
        ``wrap`` prefixes the command (e.g. ``ip netns exec NS`` to run it in a network namespace).
        """
        state = self.workdir / name
        state.mkdir(parents=True, exist_ok=True)
        if self.secure and not (state / "tls.pem").exists():
            self.enroll(name)
        mode = [] if self.secure else ["--insecure"]
        server = server or self.address
        base = ["client", "start", "--server", server, "--name", name, "--state-dir", str(state)]
        proc = self._spawn([*base, *mode, *args], f"{name}.log", wrap)
        self.daemons.append(proc)
        return proc

    def start_relay(
        self, name: str, extra: Sequence[str] = (), timeout: float = 60.0, *, server: str = ""
    ) -> tuple[subprocess.Popen[bytes], str]:
        """Start one ``fedge relay`` under the server, or under ``server`` (another relay's address).

        Enrolled with a relay token if secure. Returns the process and the address its devices
        dial (with ``--server-name NAME`` when secure: the relay's certificate names it). Counted
        with the daemons for teardown.
        """
        state = self.workdir / name
        state.mkdir(parents=True, exist_ok=True)
        if self.secure and not (state / "tls.pem").exists():
            self.enroll(name, role="relay")
        address_file = state / "children" / "address"
        address_file.unlink(missing_ok=True)
        mode = [] if self.secure else ["--insecure"]
        args = [
            "relay",
            "start",
            "--server",
            server or self.address,
            "--listen",
            "127.0.0.1:0",
            "--state-dir",
            str(state),
        ]
        proc = self._spawn([*args, *mode, *extra], f"{name}.log")
        self.daemons.append(proc)
        deadline = time.monotonic() + timeout
        while not address_file.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise FedgeError(
                    f"relay {name} did not start ({_outcome(proc, timeout)})",
                    f"see {self.workdir / (name + '.log')}",
                )
            time.sleep(0.05)
        return proc, address_file.read_text().strip()

    def wait_for_nodes(self, count: int, timeout: float = 60.0) -> None:
        """Block until ``count`` daemons are online (polling the server's node list)."""
        client = self.control()
        deadline = time.monotonic() + timeout
        try:
            while sum(n.online for n in client.list_nodes()) < count:
                dead = [p for p in self.daemons if p.poll() is not None]
                if dead or time.monotonic() > deadline:
                    raise FedgeError(
                        f"only {sum(n.online for n in client.list_nodes())} of {count} edge daemons "
                        "connected",
                        f"see the daemon logs in {self.workdir}",
                    )
                time.sleep(0.1)
        finally:
            client.close()

    def stop_daemons(self, timeout: float = 30.0) -> None:
        """Stop every daemon, keep the server, and return once the server sees none online.

        So that the next daemons started under the same names are the only ones a run can sample.
        """
        _stop(self.daemons, again_after=3.0)
        self.daemons.clear()
        client = self.control()
        deadline = time.monotonic() + timeout
        try:
            while any(n.online for n in client.list_nodes()):
                if time.monotonic() > deadline:
                    raise FedgeError("stopped edge daemons still show as online", "see the server log")
                time.sleep(0.05)
        finally:
            client.close()

    def close(self) -> None:
        """Stop daemons then the server: SIGTERM, then SIGKILL whatever is left."""
        _stop(self.daemons, again_after=3.0)
        _stop([self.server] if self.server else [])
        self.daemons.clear()
        self.server = None


def _stop(procs: list[subprocess.Popen[bytes]], again_after: float | None = None) -> None:
    """SIGTERM every process group, then SIGKILL what is left of each group after 10 s.

    ``again_after``: SIGTERM a process still running after that many seconds once more. Why: a
    daemon stopped by SIGTERM lets the task it is running finish (its operator's grace period),
    and a second signal makes it exit at once; a federation being torn down has no use for a
    half-trained update.
    """
    for proc in procs:
        _signal_group(proc, signal.SIGTERM)
    start = time.monotonic()
    if again_after is not None:
        _wait_all(procs, start + again_after)
        for proc in procs:
            if proc.poll() is None:
                _signal_group(proc, signal.SIGTERM)
    _wait_all(procs, start + 10)
    for proc in procs:
        _signal_group(proc, signal.SIGKILL)  # the leader may be gone and a child of it not
        proc.wait()


def _wait_all(procs: list[subprocess.Popen[bytes]], deadline: float) -> None:
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the simulator dies, even by SIGKILL (Linux prctl)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    except OSError:
        pass


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _outcome(proc: subprocess.Popen[bytes], timeout: float) -> str:
    """Why a process that should have started did not: its exit status, or still silent."""
    code = proc.poll()
    if code is None:
        return f"no address after {timeout:g} s"
    return f"killed by signal {-code}" if code < 0 else f"exit code {code}"
