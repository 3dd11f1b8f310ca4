"""The in-process ClientApp runtime: Context per run on disk, error replies, run config."""

from __future__ import annotations

from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from flwr.supercore.task_identity import TaskIdentity

from fedge.client.cli import build_config
from fedge.client.runtime import ClientRuntime, DeferredClientApp, load_client_app, parse_run_config
from fedge.codec import decode_message, encode_message
from fedge.errors import FedgeError

app = ClientApp()
seen: list[tuple[int, int, int]] = []


@app.query()
def query(msg: Message, context: Context) -> Message:
    seen.append((TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id))
    n = int(context.state["c"]["n"]) + 1 if "c" in context.state else 1
    context.state["c"] = MetricRecord({"n": n})
    if context.run_config.get("fail"):
        raise ValueError("asked to fail")
    cfg = ConfigRecord(
        {
            "n": n,
            **{f"run.{k}": v for k, v in context.run_config.items()},
            **{f"node.{k}": v for k, v in context.node_config.items()},
        }
    )
    return Message(RecordDict({"r": cfg}), reply_to=msg)


@app.train()
def not_a_message(msg: Message, context: Context) -> Message:
    return "oops"  # type: ignore[return-value]


def _msg(run_id: int = 11, message_type: str = "query") -> Message:
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, run_id, 1
    msg = Message(RecordDict(), dst_node_id=99, message_type=message_type)
    msg.metadata.__dict__["_message_id"] = "mid-1"
    return msg


def _runtime(tmp_path: Path) -> ClientRuntime:
    rt = ClientRuntime(app, {"data-path": "/d.npz"}, tmp_path)
    rt.node_id = 99
    return rt


def test_context_persists_per_run_and_reloads(tmp_path: Path) -> None:
    rt = _runtime(tmp_path)
    assert rt.handle(_msg(), {"lr": 0.1}).content["r"]["n"] == 1
    assert rt.handle(_msg(), None).content["r"]["run.lr"] == 0.1  # stored run config kept
    assert rt.handle(_msg(run_id=12), {}).content["r"]["n"] == 1  # another run, another state
    assert seen[-1] == (1, 12, 99)
    assert rt.context_path(11).is_file() and rt.context_path(12).is_file()

    again = _runtime(tmp_path)  # a restarted daemon
    reply = again.handle(_msg(), {"lr": 0.2})
    assert reply.content["r"]["n"] == 3 and reply.content["r"]["run.lr"] == 0.2
    assert reply.content["r"]["node.data-path"] == "/d.npz"


def test_app_exception_is_an_error_reply_and_discards_state(tmp_path: Path) -> None:
    rt = _runtime(tmp_path)
    rt.handle(_msg(), {})
    msg = _msg()
    reply = rt.handle(msg, {"fail": True})
    assert reply.has_error() and reply.error.code == ErrorCode.CLIENT_APP_RAISED_EXCEPTION
    assert reply.error.reason == "<class 'ValueError'>:<'asked to fail'>"  # Flower's format
    assert reply.metadata.reply_to_message_id == "mid-1" and reply.metadata.dst_node_id == 1
    assert rt.handle(_msg(), {}).content["r"]["n"] == 2  # the failed task's state change is gone

    bad = rt.handle(_msg(message_type="train"), {})
    assert bad.has_error() and "expected flwr.app.Message" in (bad.error.reason or "")


def test_bytes_round_trip_and_bad_run_config(tmp_path: Path) -> None:
    rt = _runtime(tmp_path)
    reply = decode_message(rt.handle_bytes(encode_message(_msg()), '{"x": "y"}'))
    assert reply.content["r"]["run.x"] == "y"
    reply = decode_message(rt.handle_bytes(encode_message(_msg()), '{"x": [1]}'))
    assert reply.has_error() and reply.error.code == ErrorCode.UNKNOWN
    assert parse_run_config("") == {}
    for raw in ("[1]", "{bad", '{"a": null}'):
        with pytest.raises(ValueError):
            parse_run_config(raw)


def test_corrupt_context_file_starts_afresh(tmp_path: Path) -> None:
    rt = _runtime(tmp_path)
    rt.context_path(11).parent.mkdir(parents=True)
    rt.context_path(11).write_bytes(b"\xff not a proto")
    assert rt.handle(_msg(), {}).content["r"]["n"] == 1


def test_load_client_app_checks_reference() -> None:
    assert load_client_app("tests.unit.test_edge_runtime:app") is app
    with pytest.raises(FedgeError, match="not a ClientApp"):
        load_client_app("tests.unit.test_edge_runtime:seen")
    with pytest.raises(FedgeError, match="invalid ClientApp reference"):
        load_client_app("nocolon")


def test_build_config_merges_file_flags_node_config_and_data(tmp_path: Path) -> None:
    data = tmp_path / "d.npz"
    data.write_bytes(b"x")
    toml = tmp_path / "edge.toml"
    toml.write_text(
        '[edge]\nserver = "127.0.0.1:1"\nname = "dev-a"\nnode-config = { partition-id = 1, k = "v" }\n'
    )
    cfg = build_config(str(toml), {"name": "dev-b", "server": None}, ["partition-id=2", "lr=0.5"], str(data))
    assert cfg.server == "127.0.0.1:1" and cfg.name == "dev-b"
    assert cfg.node_config == {"partition-id": 2, "k": "v", "lr": 0.5, "data-path": str(data.resolve())}
    with pytest.raises(FedgeError, match="data file not found"):
        build_config(None, {}, None, str(tmp_path / "nope.npz"))
    with pytest.raises(FedgeError, match="invalid device name"):
        build_config(None, {"name": "bad name!"}, None, None)


def test_the_client_app_is_imported_with_the_first_task_not_at_startup(tmp_path: Path) -> None:
    # Why it matters: the app usually imports torch (~220 MB); an idle device should not pay it.
    (tmp_path / "lazyapp_probe.py").write_text(
        "from pathlib import Path\n"
        f"Path({str(tmp_path / 'imported')!r}).write_text('yes')\n"
        "def app(message, context):\n    return message\n"
    )
    deferred = DeferredClientApp("lazyapp_probe:app", str(tmp_path))
    assert not (tmp_path / "imported").exists()
    with pytest.raises(FedgeError, match="cannot import module 'no_such_mod_xyz'"):
        DeferredClientApp("no_such_mod_xyz:app", str(tmp_path))
    sentinel = object()
    assert deferred(sentinel, None) is sentinel  # type: ignore[arg-type]
    assert (tmp_path / "imported").read_text() == "yes"
