"""Device properties and run eligibility, defined once for the server and the daemon.

A daemon announces what it is (:class:`DeviceProperties`: accelerator, cores, memory, free disk,
the operator's ``tags = ["region=eu", ...]``) in its Hello, and what it can do right now (the
dynamic :data:`SIGNALS`: on mains power, idle, on an unmetered network) in Hello and again in
every heartbeat. A run names the devices it wants with two run-config keys:

* ``select = "region=eu,accelerator=cuda"``: every ``key=value`` must hold. A key is one of the
  device's tag keys, or ``accelerator`` (``cuda`` matches ``cuda:0``; ``cpu`` matches ``cpu``);
* ``require = "charging,unmetered"``: every named signal must be ``yes`` (``unknown`` is not).

Why both sides: the server samples only devices whose last report matches
(:mod:`fedge.server.eligible`), but a phone unplugged since its last heartbeat learns it first.
So the daemon checks again, with fresh signals, before it takes a train task and, when it no
longer qualifies, answers with a *decline* (:data:`DECLINED`): an error reply that the round
does not count as a failure and that makes the server sample another device in its place.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fedge.errors import FedgeError
from fedge.protos.v1 import fleet_pb2

#: Dynamic signals a device may report; each is ``yes``, ``no`` or ``unknown``.
SIGNALS = ("charging", "idle", "unmetered")
YES, NO, UNKNOWN = "yes", "no", "unknown"
#: Flower ``Error.code`` of a decline (fedge's codes start at 600; 600 is a rejected update).
DECLINED = 601
#: Run-config keys (and ``RunSettings`` fields) that carry a run's filter.
SELECT_KEY, REQUIRE_KEY = "select", "require"

_TOKEN = re.compile(r"^[A-Za-z0-9_.:/-]{1,64}$")
#: Keys ``select`` understands besides the device's tag keys.
BUILTIN_KEYS = ("accelerator",)


@dataclass(frozen=True)
class DeviceProperties:
    """What a device reported about itself (the server's copy, or the daemon's fresh one)."""

    accelerator: str = ""
    cores: int = 0
    memory_bytes: int = 0
    free_disk_bytes: int = 0
    tags: tuple[str, ...] = ()
    signals: Mapping[str, str] = field(default_factory=dict)

    def tag_map(self) -> dict[str, str]:
        """``{"region": "eu", ...}`` from the ``key=value`` tags."""
        return dict(tag.split("=", 1) for tag in self.tags if "=" in tag)

    def signal(self, name: str) -> str:
        """``yes``, ``no`` or ``unknown`` (anything else a device sent reads as ``unknown``)."""
        value = self.signals.get(name, UNKNOWN)
        return value if value in (YES, NO) else UNKNOWN


def check_tags(tags: list[str] | tuple[str, ...], source: str = "tags") -> tuple[str, ...]:
    """Validate operator tags (``key=value``, short printable tokens); returns them as a tuple."""
    for tag in tags:
        key, sep, value = tag.partition("=")
        if not sep or not _TOKEN.match(key) or not _TOKEN.match(value):
            raise FedgeError(
                f"invalid tag {tag!r} in {source}",
                'write tags as key=value of letters, digits and _.:/-, e.g. tags = ["region=eu"]',
            )
        if key in BUILTIN_KEYS:
            raise FedgeError(
                f"tag key {key!r} in {source} is a built-in property",
                f"choose another key; {key} is reported by the daemon itself",
            )
    return tuple(tags)


@dataclass(frozen=True)
class Eligibility:
    """A run's filter: ``select`` pairs that must hold and ``require``d signals that must be yes."""

    select: tuple[tuple[str, str], ...] = ()
    require: tuple[str, ...] = ()

    @classmethod
    def parse(cls, select: str = "", require: str = "") -> Eligibility:
        """Parse the two run-config strings; a malformed one is a ``FedgeError`` with a hint."""
        pairs: list[tuple[str, str]] = []
        for item in _items(select):
            key, sep, value = item.partition("=")
            key, value = key.strip(), value.strip()
            if not sep or not _TOKEN.match(key) or not _TOKEN.match(value):
                raise FedgeError(
                    f"invalid --select item {item!r}",
                    'write key=value pairs separated by commas, e.g. --select "region=eu,accelerator=cuda"',
                )
            pairs.append((key, value))
        needs = _items(require)
        for name in needs:
            if name not in SIGNALS:
                raise FedgeError(f"unknown --require signal {name!r}", f"choose from: {', '.join(SIGNALS)}")
        return cls(tuple(pairs), tuple(dict.fromkeys(needs)))

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> Eligibility:
        """The filter of a run config (none when the keys are absent)."""
        return cls.parse(
            str(run_config.get(SELECT_KEY, "") or ""), str(run_config.get(REQUIRE_KEY, "") or "")
        )

    @property
    def active(self) -> bool:
        """Whether the run filters devices at all."""
        return bool(self.select or self.require)

    def describe(self) -> str:
        """The filter as the flags that set it, for error messages."""
        parts = []
        if self.select:
            parts.append(f'--select "{",".join(f"{k}={v}" for k, v in self.select)}"')
        if self.require:
            parts.append(f'--require "{",".join(self.require)}"')
        return " ".join(parts) or "no filter"

    def problems(self, props: DeviceProperties) -> list[str]:
        """Why a device with ``props`` is not eligible (empty: it is)."""
        out = []
        tags = props.tag_map()
        for key, value in self.select:
            if key == "accelerator":
                have = props.accelerator
                if value != have and value != have.split(":", 1)[0]:
                    out.append(f"accelerator is {have or 'unknown'}, not {value}")
            elif tags.get(key) != value:
                out.append(f"tag {key} is {tags.get(key, 'unset')}, not {value}")
        for name in self.require:
            state = props.signal(name)
            if state != YES:
                out.append(f"{name} is {state}")
        return out

    def matches(self, props: DeviceProperties) -> bool:
        """Whether a device with ``props`` may be sampled."""
        return not self.problems(props)


def is_decline(code: int) -> bool:
    """Whether a Flower ``Error.code`` is a device's decline (not a failure)."""
    return code == DECLINED


def _items(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def to_proto(props: DeviceProperties) -> fleet_pb2.DeviceProperties:
    """The wire form (``fleet.proto`` ``DeviceProperties``; the accelerator travels in Hello)."""
    return fleet_pb2.DeviceProperties(
        cores=props.cores,
        memory_bytes=props.memory_bytes,
        free_disk_bytes=props.free_disk_bytes,
        tags=list(props.tags),
        signals=dict(props.signals),
    )


def from_proto(msg: fleet_pb2.DeviceProperties, accelerator: str) -> DeviceProperties:
    """A peer's report, bounded: at most 32 tags and the known signals, each value clipped.

    Whatever a device sends is kept only in this bounded form (a report is refreshed with every
    heartbeat, so an unbounded one would let a peer grow the server's memory at will).
    """
    return DeviceProperties(
        accelerator=accelerator[:64],
        cores=msg.cores,
        memory_bytes=msg.memory_bytes,
        free_disk_bytes=msg.free_disk_bytes,
        tags=tuple(tag[:130] for tag in msg.tags[:32]),
        signals={name: msg.signals[name][:8] for name in SIGNALS if name in msg.signals},
    )
