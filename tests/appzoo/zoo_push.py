"""``push_messages`` without waiting for replies, and custom message types.

The server announces ``query.notify`` to every node and never collects those replies, then asks
with ``query.tally`` what each node saw (kept in ``context.state``), until all have seen it.
"""

from __future__ import annotations

import time

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from zoo_data import save_result

client_app = ClientApp()
server_app = ServerApp()


@client_app.query("notify")
def notify(msg: Message, context: Context) -> Message:
    seen = int(context.state.config_records.get("zoo", ConfigRecord({"sum": 0}))["sum"])  # type: ignore[arg-type]
    value = int(msg.content["config"]["value"])  # type: ignore[arg-type]
    context.state.config_records["zoo"] = ConfigRecord({"sum": seen + value})
    return Message(RecordDict(), reply_to=msg)


@client_app.query("tally")
def tally(msg: Message, context: Context) -> Message:
    seen = int(context.state.config_records.get("zoo", ConfigRecord({"sum": 0}))["sum"])  # type: ignore[arg-type]
    return Message(RecordDict({"tally": MetricRecord({"sum": seen})}), reply_to=msg)


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    nodes = sorted(grid.get_node_ids())
    while len(nodes) < 3:
        time.sleep(0.1)
        nodes = sorted(grid.get_node_ids())
    # Fire and forget: these replies are never pulled. One message per node, because Flower's
    # simulation may run two messages to the same node at once (their state writes would race).
    notes = [Message(RecordDict({"config": ConfigRecord({"value": 11})}), n, "query.notify") for n in nodes]
    assert len(list(grid.push_messages(notes))) == len(nodes)
    sums: list[int] = []
    for _ in range(200):
        asks = [Message(RecordDict(), n, "query.tally") for n in nodes]
        replies = grid.send_and_receive(asks, timeout=30)
        sums = sorted(int(r.content["tally"]["sum"]) for r in replies if not r.has_error())  # type: ignore[arg-type]
        if sums == [11] * len(nodes):
            break
        time.sleep(0.05)
    save_result(context.run_config, {"sums": sums})
