"""What the edge imports: the daemon needs the secagg wire spec, never the server's strategies.

The secure-aggregation message spec lives beside its protocol (``fedge.security.secagg.wire``), so
the edge daemon imports neither ``fedge.strategies`` (and through it every Flower strategy, Krum
and Bulyan included) nor anything of the server. Each check runs in a fresh interpreter.
"""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import json, sys
import flwr  # the baseline: what Flower itself imports on `import flwr`
before = set(sys.modules)
import fedge.client.daemon, fedge.client.runtime
added = sorted(set(sys.modules) - before)
print(json.dumps({"before": sorted(before), "added": added}))
"""


def _modules() -> dict[str, list[str]]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_the_edge_daemon_imports_no_server_strategy() -> None:
    modules = _modules()
    added = modules["added"]
    assert "fedge.client.daemon" in added  # the probe really imported the daemon
    assert not [m for m in added if m.startswith("flwr.serverapp.strategy")]
    assert not [m for m in added if m.startswith(("fedge.strategies", "fedge.server"))]
    assert "fedge.security.secagg.wire" in added
    # flwr 1.42's own `import flwr` loads flwr.serverapp (and its strategies) eagerly; where a
    # Flower version does not, the literal check holds as well.
    if not any(m.startswith("flwr.serverapp.strategy") for m in modules["before"]):
        assert not any(m.startswith("flwr.serverapp.strategy") for m in added)
