"""A stock Flower ClientApp for the edge daemon tests, written only against ``flwr``.

- ``train``: echoes the received arrays and counts calls in ``context.state`` (persistence).
- ``train.slow``: touches ``run_config["started-file"]`` then waits for ``run_config["release-file"]``
  (lets a test signal the daemon while a task is provably running).
- ``evaluate``: always raises (error replies).
- ``query``: reports node_config and run_config back.
"""

from __future__ import annotations

import time
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


def _count(context: Context) -> int:
    calls = int(context.state["calls"]["n"]) + 1 if "calls" in context.state else 1
    context.state["calls"] = MetricRecord({"n": calls})
    return calls


@app.train()
def train(msg: Message, context: Context) -> Message:
    calls = _count(context)
    content = RecordDict({"arrays": msg.content["arrays"], "metrics": MetricRecord({"calls": calls})})
    return Message(content, reply_to=msg)


@app.train("slow")
def slow(msg: Message, context: Context) -> Message:
    Path(str(context.run_config["started-file"])).touch()
    release = Path(str(context.run_config["release-file"]))
    deadline = time.monotonic() + 60
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.02)  # this *is* the workload: a task that runs until the test releases it
    return Message(RecordDict({"metrics": MetricRecord({"calls": _count(context)})}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    raise RuntimeError("boom in evaluate")


@app.query()
def query(msg: Message, context: Context) -> Message:
    report = ConfigRecord({f"node.{k}": v for k, v in context.node_config.items()})
    report.update({f"run.{k}": v for k, v in context.run_config.items()})
    report["node-id"] = str(context.node_id)
    return Message(RecordDict({"report": report}), reply_to=msg)
