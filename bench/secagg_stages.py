"""Wall time of each SecAgg+ stage inside a real fedge run (bench only; imported by the bench app).

:class:`StageTimedSecureExchange` is ``fedge.strategies.SecureExchange`` unchanged except that
each round's grid is wrapped in :class:`_StageClock`, which times every exchange from the push of
its messages to the moment the strategy has consumed the last reply -- so an exchange's time includes
the server's per-reply work (decoding, opening sealed replies, folding masked vectors). What is left
of ``train`` outside the four exchanges is the server's own work between them (Shamir
recombination, mask removal, dequantization, building the aggregate). Appended per round to
``<timings-path>.stages.json``; the overhead is a few ``perf_counter`` calls per stage.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from flwr.app import Message
from flwr.serverapp import Grid

from fedge.security.secagg.wire import RECORD
from fedge.strategies import SecureExchange

STAGE_NAMES = ("advertise", "share", "masked-input", "unmask")


class _StageClock:
    """Grid proxy timing each ``send_and_stream``/``send_and_receive`` exchange (duck-typed)."""

    def __init__(self, grid: Grid) -> None:
        self._grid = grid
        self.exchanges: list[dict[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def send_and_stream(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterator[Message]:
        batch = list(messages)
        t0 = time.perf_counter()
        count = 0
        for reply in self._grid.send_and_stream(batch, timeout=timeout):  # type: ignore[attr-defined]
            count += 1
            yield reply
        self._note(batch, count, time.perf_counter() - t0)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        batch = list(messages)
        t0 = time.perf_counter()
        replies = list(self._grid.send_and_receive(batch, timeout=timeout))
        self._note(batch, len(replies), time.perf_counter() - t0)
        return replies

    def _note(self, batch: list[Message], replies: int, seconds: float) -> None:
        stage = "?"
        if batch and batch[0].has_content() and RECORD in batch[0].content.config_records:
            stage = str(batch[0].content.config_records[RECORD].get("stage", "?"))
        self.exchanges.append({"stage": stage, "messages": len(batch), "replies": replies, "s": seconds})


class StageTimedSecureExchange(SecureExchange):
    """SecureExchange that records the wall time of each stage of each round to ``path``."""

    def __init__(self, *args: Any, path: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.path = path
        self.stage_rounds: list[dict[str, Any]] = []

    def train(
        self, grid: Grid, messages: list[Message], server_round: int, timeout: float | None
    ) -> list[Message]:
        clock = _StageClock(grid)
        t0 = time.perf_counter()
        replies = super().train(clock, messages, server_round, timeout)  # type: ignore[arg-type]
        total = time.perf_counter() - t0
        exchanged = sum(e["s"] for e in clock.exchanges)
        self.stage_rounds.append(
            {
                "round": server_round,
                "train_round_s": total,
                "exchanges": clock.exchanges,
                "server_between_s": total - exchanged,
            }
        )
        self._write()
        return replies

    def _write(self) -> None:
        if not self.path:
            return
        path = Path(self.path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.stage_rounds, indent=2))
        os.replace(tmp, path)
