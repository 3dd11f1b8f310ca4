"""A compromised device's ClientApp: fedge's own training, then a lie about the result.

Run by the real ``fedge client`` daemon (``--client-app tests.adversary.poisoner:client_app``),
so every reply is sealed to the run's aggregator key and signed with the device's enrolled key
exactly as an honest one: only screening and aggregation stand between it and the model. The
attack is chosen per run by the run config key ``attack``:

- ``weight=X``: report ``num-examples = X`` (e.g. ``1e9``, ``nan``) on every reply; with a
  negative ``X`` the update is zero (the global model sent back), as in the review's attack;
- ``scale=X``: send ``global + X · (trained - global)``, an update X times larger;
- ``absent``: fail every train instruction, so the round goes on without this device (what
  the model becomes when its update is rejected);
- absent or ``none``: behave honestly (the baseline run).
"""

from __future__ import annotations

from flwr.app import Array, ArrayRecord, Context, Message
from flwr.clientapp import ClientApp

from fedge.client.app import evaluate_fn, train_fn

client_app = ClientApp()


def _attack(context: Context) -> tuple[str, float]:
    kind, _, value = str(context.run_config.get("x-attack", "none")).partition("=")
    return kind, float(value or 0)


def _claim(reply: Message, weight: float) -> Message:
    for record in reply.content.metric_records.values():
        if "num-examples" in record:
            record["num-examples"] = weight
    return reply


@client_app.train()
def train(message: Message, context: Context) -> Message:
    """Train honestly, then apply the run's attack to the reply."""
    kind, value = _attack(context)
    if kind == "absent":
        raise RuntimeError("this device sits the round out")
    received = message.content.array_records["arrays"]
    reply = train_fn(message, context)
    if kind == "weight":
        if value < 0:  # a zero update: the global model itself
            reply.content["arrays"] = ArrayRecord({k: Array(v.numpy()) for k, v in received.items()})
        return _claim(reply, value)
    if kind == "scale":
        trained = reply.content.array_records["arrays"]
        scaled = {}
        for name, array in trained.items():
            new, old = array.numpy(), received[name].numpy()
            scaled[name] = Array(
                (old + value * (new - old)).astype(new.dtype) if new.dtype.kind == "f" else new
            )
        reply.content["arrays"] = ArrayRecord(scaled)
    return reply


@client_app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    """Evaluate honestly; a weight attack lies about the evaluation's weight too."""
    kind, value = _attack(context)
    reply = evaluate_fn(message, context)
    return _claim(reply, value) if kind == "weight" else reply
