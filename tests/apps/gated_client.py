"""fedge's own ClientApp behind a gate, so a test can hold a round open for as long as it needs.

While the file named by the node config ``gate`` holds a round number, train messages of that
round wait before training (everything else passes straight to :data:`fedge.client.app.app`).
An end-to-end test can then kill the server *in the middle of* that round with certainty instead
of racing a round that takes milliseconds; results are exactly fedge's, as the gate only delays.
"""

from __future__ import annotations

import time
from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedge.client.app import app as fedge_client_app

GATE_TIMEOUT = 120.0

app = ClientApp()


@app.train()
def train(message: Message, context: Context) -> Message:
    """Wait while the gate names this round (up to GATE_TIMEOUT), then train as fedge does."""
    gate = Path(str(context.node_config["gate"]))
    server_round = str(message.content.config_records["config"]["server-round"])
    deadline = time.monotonic() + GATE_TIMEOUT
    while _gated(gate, server_round) and time.monotonic() < deadline:
        time.sleep(0.02)  # another process opens the gate: a file is the simplest shared condition
    return fedge_client_app(message, context)


@app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    """fedge's evaluation, ungated."""
    return fedge_client_app(message, context)


def _gated(gate: Path, server_round: str) -> bool:
    try:
        return gate.read_text().strip() == server_round
    except FileNotFoundError:
        return False
