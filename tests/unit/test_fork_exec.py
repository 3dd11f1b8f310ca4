"""Processes fedge starts survive gRPC's fork handlers (grpc/grpc#43055).

A process that has used gRPC and then forks to exec through a ``preexec_fn`` (as
:class:`fedge.sim.local.LocalFederation` does) lost about one child in five to a crash before
exec with grpcio 1.85, until ``import fedge`` turned gRPC's fork support off. Run in a fresh
interpreter: the suite's own process imported fedge long ago.
"""

from __future__ import annotations

import os
import subprocess
import sys

SCRIPT = """
import subprocess
from concurrent import futures

import fedge  # first, as every fedge entry point does
import grpc

server = grpc.server(futures.ThreadPoolExecutor(2))
port = server.add_insecure_port("127.0.0.1:0")
server.start()
channels = [grpc.insecure_channel(f"127.0.0.1:{port}") for _ in range(4)]
for channel in channels:
    grpc.channel_ready_future(channel).result(timeout=10)
codes = []
for _ in range(100):
    child = subprocess.Popen(["/bin/true"], preexec_fn=lambda: None, start_new_session=True)
    codes.append(child.wait())
print(sum(code != 0 for code in codes), sorted(set(codes)))
"""


def test_children_forked_after_grpc_use_all_reach_exec() -> None:
    env = {k: v for k, v in os.environ.items() if k != "GRPC_ENABLE_FORK_SUPPORT"}
    command = [sys.executable, "-c", SCRIPT]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == "0", done.stdout  # no child died before exec
    assert "fork()" not in done.stderr, done.stderr  # and gRPC logs nothing per fork
