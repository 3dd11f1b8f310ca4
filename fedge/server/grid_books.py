"""What a :class:`~fedge.server.grid.FedgeGrid` keeps per batch and per round.

:class:`Replacements`: which instruction a stand-in for a declining device answers.
:class:`RoundStats`: what the transport counted in a round, for ``metrics.jsonl``.
"""

from __future__ import annotations

from dataclasses import dataclass

from flwr.app import Message

__all__ = ["Replacements", "RoundStats"]


class Replacements:
    """One batch's stand-ins for declining devices: who was used, what stands for what."""

    def __init__(self, batch: list[Message]) -> None:
        self._by_id = {m.metadata.message_id: m for m in batch}
        self._root: dict[str, str] = {}
        self.used = {m.metadata.dst_node_id for m in batch}

    def root(self, message_id: str) -> str:
        """The batch instruction ``message_id`` stands for (itself when it is one)."""
        return self._root.get(message_id, message_id)

    def original(self, message_id: str) -> Message | None:
        """The batch instruction (with its content) behind ``message_id``."""
        return self._by_id.get(self.root(message_id))

    def add(self, new_id: str, replaces: str, node: int) -> None:
        self._root[new_id] = self.root(replaces)
        self.used.add(node)


@dataclass
class RoundStats:
    """What the transport counted in one round (:meth:`FedgeGrid.round_stats`)."""

    train_bytes: int = 0
    eval_bytes: int = 0
    declined: int = 0
    replaced: int = 0
    population: int = 0

    def add_bytes(self, message_type: str, size: int) -> None:
        if message_type.split(".")[0] == "train":
            self.train_bytes += size
        else:
            self.eval_bytes += size

    def as_metrics(self) -> dict[str, int]:
        """``metrics.jsonl`` keys: uplink bytes as the server received them (sealed, encoded)."""
        return {
            "train-uplink-bytes": self.train_bytes,
            "eval-uplink-bytes": self.eval_bytes,
            "train-declined": self.declined,
            "train-replaced": self.replaced,
            "sampled-from": self.population,
        }
