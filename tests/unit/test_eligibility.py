"""Device properties, run filters and the daemon's decline (fedge.eligibility, fedge.client.properties)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from flwr.app import Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedge.client.properties import PropertyReader, decline_reason
from fedge.client.runtime import ClientRuntime
from fedge.config import EdgeConfig
from fedge.eligibility import DECLINED, DeviceProperties, Eligibility, check_tags, from_proto, to_proto
from fedge.errors import FedgeError
from fedge.server.run_settings import RunSettings

EU_CUDA = DeviceProperties(
    accelerator="cuda:0", tags=("region=eu", "tier=gateway"), signals={"charging": "yes", "unmetered": "no"}
)


def test_select_matches_tags_and_the_accelerator_kind() -> None:
    assert Eligibility.parse("region=eu,accelerator=cuda").matches(EU_CUDA)
    assert Eligibility.parse("accelerator=cuda:0").matches(EU_CUDA)
    assert Eligibility.parse("region=us").problems(EU_CUDA) == ["tag region is eu, not us"]
    assert Eligibility.parse("accelerator=cpu").problems(EU_CUDA) == ["accelerator is cuda:0, not cpu"]
    assert Eligibility.parse("zone=a").problems(EU_CUDA) == ["tag zone is unset, not a"]


def test_require_needs_yes_and_unknown_is_not_yes() -> None:
    assert Eligibility.parse(require="charging").matches(EU_CUDA)
    assert Eligibility.parse(require="charging,unmetered,idle").problems(EU_CUDA) == [
        "unmetered is no",
        "idle is unknown",
    ]
    assert not Eligibility.parse(require="charging").matches(DeviceProperties())
    odd = DeviceProperties(signals={"charging": "maybe"})  # anything but yes/no reads as unknown
    assert odd.signal("charging") == "unknown"


def test_no_filter_matches_everyone_and_describes_itself() -> None:
    wanted = Eligibility.from_run_config({})
    assert not wanted.active and wanted.matches(DeviceProperties())
    both = Eligibility.from_run_config({"select": "region=eu", "require": "charging,idle"})
    assert both.describe() == '--select "region=eu" --require "charging,idle"'


@pytest.mark.parametrize(
    ("select", "require", "expected"),
    [
        ("region", "", "invalid --select item 'region'"),
        ("region=e u", "", "invalid --select item 'region=e u'"),
        ("", "charging,plugged", "unknown --require signal 'plugged'"),
    ],
)
def test_malformed_filters_are_refused_with_a_hint(select: str, require: str, expected: str) -> None:
    with pytest.raises(FedgeError) as err:
        Eligibility.parse(select, require)
    assert err.value.message == expected and err.value.hint
    with pytest.raises(FedgeError):  # and a run with one never starts
        RunSettings.from_run_config({"select": select, "require": require})


def test_tags_must_be_key_value_and_not_shadow_a_builtin() -> None:
    assert check_tags(["region=eu"]) == ("region=eu",)
    for bad in (["region"], ["a b=c"], ["accelerator=tpu"]):
        with pytest.raises(FedgeError):
            check_tags(bad)


def test_the_wire_form_is_bounded() -> None:
    wire = to_proto(DeviceProperties(tags=tuple(f"t{i}=v" for i in range(50)), signals={"charging": "yes"}))
    wire.signals["bogus"] = "x" * 1000
    back = from_proto(wire, "cpu" * 100)
    assert len(back.tags) == 32 and dict(back.signals) == {"charging": "yes"} and len(back.accelerator) == 64


def _reader(tmp_path: Path, **kw: object) -> PropertyReader:
    return PropertyReader(EdgeConfig(state_dir=str(tmp_path), device="cpu", tags=["region=eu"], **kw))  # type: ignore[arg-type]


def test_properties_come_from_the_host_the_config_and_the_signal_file(tmp_path: Path) -> None:
    signals = tmp_path / "signals.json"
    signals.write_text(json.dumps({"charging": True, "idle": "no"}))
    props = _reader(tmp_path, signals_file=str(signals)).current()
    assert props.cores >= 1 and props.memory_bytes > 0 and props.free_disk_bytes > 0
    assert props.tags == ("region=eu",) and props.accelerator == "cpu"
    assert dict(props.signals) == {"charging": "yes", "idle": "no", "unmetered": "unknown"}
    signals.write_text(json.dumps({"charging": False}))  # read afresh every time
    assert _reader(tmp_path, signals_file=str(signals)).current().signal("charging") == "no"


def test_a_signal_command_and_a_broken_provider(tmp_path: Path) -> None:
    cmd = f'{sys.executable} -c "print(\'{{\\"unmetered\\": true}}\')"'
    assert _reader(tmp_path, signals_command=cmd).signals()["unmetered"] == "yes"
    missing = _reader(tmp_path, signals_file=str(tmp_path / "nope.json")).signals()
    assert set(missing.values()) == {"unknown"}  # the safe side: never eligible for a requirement
    assert set(_reader(tmp_path).signals().values()) == {"unknown"}  # no provider at all


def test_the_daemon_declines_train_tasks_only_when_it_no_longer_qualifies(tmp_path: Path) -> None:
    signals = tmp_path / "signals.json"
    signals.write_text(json.dumps({"charging": False}))
    reader = _reader(tmp_path, signals_file=str(signals))
    run = {"require": "charging", "select": "region=eu"}
    assert decline_reason(reader, "train", run) == (
        'declined: charging is no (run filter --select "region=eu" --require "charging")'
    )
    assert decline_reason(reader, "evaluate", run) == ""
    assert decline_reason(reader, "train", {}) == ""
    signals.write_text(json.dumps({"charging": True}))
    assert decline_reason(reader, "train", run) == ""


def test_a_declined_task_never_reaches_the_app(tmp_path: Path) -> None:
    calls: list[Message] = []

    def app(msg: Message, ctx: Context) -> Message:
        calls.append(msg)
        return Message(RecordDict(), reply_to=msg)

    runtime = ClientRuntime(app, {}, tmp_path)
    runtime.decline = lambda kind, run_config: "declined: charging is no" if kind == "train" else ""
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 3, 1
    msg = Message(RecordDict(), dst_node_id=1, message_type="train")
    msg.metadata.__dict__["_message_id"] = "m1"
    reply = runtime.handle(msg, {})
    assert reply.has_error() and reply.error.code == DECLINED and "charging is no" in reply.error.reason
    assert calls == []
    evaluate = Message(RecordDict(), dst_node_id=1, message_type="evaluate")
    evaluate.metadata.__dict__["_message_id"] = "m2"
    assert not runtime.handle(evaluate, {}).has_error() and len(calls) == 1
