"""The recording observer of fedge's round loop: reply counts, metrics, checkpoints, commits, reports.

One object the loop (:func:`fedge.strategies.run_rounds`) calls at each step of a round, as
Flower's wrapper strategies delegate each hook explicitly — nothing is patched onto the strategy.
``finished`` is where a round is complete, and so where it is evaluated centrally, checkpointed,
written to ``metrics.jsonl`` and committed (:mod:`fedge.server.commit`). Every round number it
sees comes from the loop; resuming only changes which rounds the loop runs.
"""

from __future__ import annotations

import functools
import json
import logging
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import Strategy

from fedge import atomic
from fedge.codec import array_view
from fedge.eligibility import is_decline
from fedge.errors import FedgeError
from fedge.security.dp import PrivacyAccountant
from fedge.server.commit import CommitStore
from fedge.server.events import EventKind
from fedge.server.plots import write_plots
from fedge.server.reporting import Reporter
from fedge.server.run_settings import RunSettings
from fedge.server.snapshot import restore_rng, restore_strategy, rng_state, strategy_state
from fedge.strategies import Phase, RoundObserver
from fedge.strategies.exchange import contributors
from fedge.tasks import Task, TrainContext, task_data

log = logging.getLogger("fedge.server.app")


class RoundRecorder(RoundObserver):
    """Per-round bookkeeping of fedge's ServerApp for ``strategy`` (the one the loop runs)."""

    def __init__(
        self,
        settings: RunSettings,
        task: Task,
        strategy: Strategy,
        run_id: int,
        report: Reporter,
        device: torch.device | None = None,
        base: Mapping[str, torch.Tensor] | None = None,
        stats: Callable[[int], dict[str, int]] | None = None,
    ) -> None:
        """``base``: the full initial model, for tasks whose rounds carry only the trainable part.

        ``stats``: what the transport counted in a round (``FedgeGrid.round_stats``: uplink bytes,
        declines, the population sampled from), added to its metrics line; ``None`` elsewhere.
        """
        self.stats = stats
        self.round_stats: dict[str, int] = {}
        self.settings = settings
        self.base = dict(base or {})
        # Central evaluation only: aggregation stays on the CPU (bench/gpu.py measured why).
        self.device = device or torch.device("cpu")
        self.report = report
        self.task = task
        self.strategy = strategy
        self.run_dir = Path(settings.run_dir)
        self.run_id = run_id
        self.lines: list[dict[str, Any]] = []
        self.pending: dict[str, Any] = {}
        self.count = {Phase.TRAIN: 0, Phase.EVALUATE: 0}
        self.valid = 0
        self.required = int(getattr(strategy, "min_train_nodes", settings.min_clients))
        self.started = self.round_started = time.perf_counter()
        self.commits = CommitStore(self.run_dir / "state")
        self.accountant = (
            # q = 1: node sampling is seeded from the run config, so it is neither random nor
            # secret, and amplification by sampling must not be claimed...
            PrivacyAccountant(settings.dp_noise, settings.dp_delta, sampling_rate=1.0)
            if settings.dp.enabled
            else None
        )
        # ...unless the run samples secretly (`secret-sampling`): then a second accountant
        # composes each round at its own q = sampled / eligible, and both ε are reported.
        self.amplified = (
            PrivacyAccountant(settings.dp_noise, settings.dp_delta)
            if settings.dp.enabled and settings.secret_sampling
            else None
        )

    def sent(self, phase: Phase, server_round: int, messages: list[Message]) -> None:
        self.count[phase] = len(messages)

    def received(self, phase: Phase, server_round: int, replies: list[Message]) -> list[Message]:
        """Count the replies; fail the run when a train phase has fewer valid updates than required."""
        if phase is Phase.TRAIN:
            # Node order, not arrival order: float sums then do not depend on network timing.
            replies = sorted(replies, key=lambda m: m.metadata.src_node_id)
        # A secure-aggregation reply stands for every client folded into it.
        valid = sum(contributors(m) for m in replies)
        self.pending[f"{phase}-replies"] = valid
        errors = sum(m.has_error() for m in replies)
        # A device that declined (no longer eligible, and nobody left to take its place) did not fail.
        declined = sum(m.has_error() and is_decline(m.error.code) for m in replies)
        self.pending[f"{phase}-failures"] = max(self.count[phase] - valid - declined, errors - declined)
        if phase is Phase.TRAIN:
            self.valid = valid
            if valid < self.required:
                raise FedgeError(
                    f"round {server_round}: only {valid} of the {self.required} required clients "
                    f"returned an update{_reasons(replies)}",
                    _hint(replies),
                )
        return replies

    def aggregated(
        self, phase: Phase, server_round: int, arrays: ArrayRecord | None, metrics: MetricRecord | None
    ) -> None:
        if phase is Phase.TRAIN and arrays is None and self.valid:
            raise FedgeError(
                f"round {server_round}: {type(self.strategy).__name__} produced no model from "
                f"{self.valid} updates",
                "check the strategy parameters against the number of clients "
                "(e.g. bulyan needs 4*num-malicious-nodes + 3 updates)",
            )
        self.pending.update(dict(metrics or {}))
        if phase is Phase.TRAIN and self.stats is not None:
            self.round_stats = self.stats(server_round)
        if phase is Phase.TRAIN and self.accountant is not None:
            # One more release of the noised aggregate: the privacy spent so far, per round.
            self.pending["dp-epsilon"] = self.accountant.step()
            self.pending["dp-delta"] = self.settings.dp_delta
        if phase is Phase.TRAIN and self.amplified is not None:
            sampled = self.count[Phase.TRAIN] + self.round_stats.get("train-replaced", 0)
            rate = _sampling_rate(sampled, self.round_stats.get("sampled-from", 0))
            self.pending["dp-sampling-rate"] = rate
            self.pending["dp-epsilon-amplified"] = self.amplified.step(sampling_rate=rate)

    def finished(self, server_round: int, arrays: ArrayRecord) -> None:
        """Central evaluation, checkpoint, metrics line and commit for a finished round."""
        # Checkpoints hold the whole (merged) model: the frozen part as built, the trained part.
        state = {**self.base, **_tensors(arrays)}
        central = MetricRecord()
        if self.settings.central_eval:
            model = self.task.build_model()
            model.load_state_dict(state)
            seed = self.settings.train.seed
            ctx = TrainContext(self.settings.train, seed=seed, device=self.device)
            scores = self.task.score(model, task_data(self.task, seed)[1], ctx)
            for key, value in scores.items():
                central[f"central-{key}"] = value
        atomic.write_with(self.checkpoint(server_round), functools.partial(torch.save, state), atomic.PRIVATE)
        now = time.perf_counter()
        if self.stats is not None:  # now with the evaluate replies too
            self.round_stats = self.stats(server_round)
        line = {
            "round": server_round,
            **self.pending,
            **self.round_stats,
            **central,
            "round-seconds": now - self.round_started,
            "seconds": now - self.started,
        }
        self.lines.append(line)
        self.pending, self.round_started, self.round_stats = {}, now, {}
        self.commits.write(
            server_round,
            {
                "arrays": arrays,
                "strategy": strategy_state(self.strategy),
                "rng": rng_state(),
                "metrics": self.lines,
            },
        )
        self._write_metrics()
        log.info("round %d/%d: %s", server_round, self.settings.num_server_rounds, line)
        self.report(
            EventKind.ROUND_FINISHED,
            {"round": server_round, "num_rounds": self.settings.num_server_rounds, "metrics": line},
        )

    def resume(self) -> tuple[int, ArrayRecord]:
        """Restore the newest good commit: its round and its global arrays (the model to continue from)."""
        commit = self.commits.latest()
        if commit is None:
            raise FedgeError(
                f"run {self.run_id} has no committed round in {self.commits.directory}",
                "start a new run with `fedge run start`",
            )
        state = commit.state
        restore_strategy(self.strategy, state["strategy"])
        restore_rng(state["rng"])
        self.lines = list(state["metrics"])
        self.started = time.perf_counter() - float(self.lines[-1].get("seconds", 0.0))
        if self.accountant is not None and commit.round:
            self.accountant.step(commit.round)
        if self.amplified is not None:  # each committed round again, at the q it had
            for row in self.lines:
                if "dp-sampling-rate" in row:
                    self.amplified.step(sampling_rate=float(row["dp-sampling-rate"]))
        self._write_metrics()
        log.info("run %s: resuming after round %d from %s", self.run_id, commit.round, commit.path)
        arrays = state["arrays"]
        assert isinstance(arrays, ArrayRecord)
        return commit.round, arrays

    def _write_metrics(self) -> None:
        atomic.write_text(
            self.run_dir / "metrics.jsonl",
            "".join(json.dumps(row) + "\n" for row in self.lines),
            atomic.PRIVATE,
        )

    def checkpoint(self, server_round: int) -> Path:
        """Path of the global model after ``server_round`` (0 = initial model)."""
        return self.run_dir / "checkpoints" / f"round-{server_round:04d}.pt"

    def finish(self) -> dict[str, Any]:
        """Write ``summary.json`` and send the ``summary`` report."""
        last = self.lines[-1] if self.lines else {}
        # Central accuracy (test split) when evaluated, else the clients' weighted eval accuracy.
        acc_key, loss_key = (
            ("central-accuracy", "central-loss") if "central-accuracy" in last else ("eval-acc", "eval-loss")
        )
        summary = {
            "run-id": self.run_id,
            "task": self.settings.train.task,  # the reference: what exports and resumes load
            "task-name": self.task.name,
            "strategy": self.settings.strategy,
            "rounds": last.get("round", 0),
            "final-accuracy": last.get(acc_key),
            "final-loss": last.get(loss_key),
            "accuracy-source": acc_key,
            "run-dir": str(self.run_dir),
            "checkpoint": str(self.checkpoint(last.get("round", 0))),
            "seconds": time.perf_counter() - self.started,
            "secure-aggregation": self.settings.secagg,
            "privacy": self.accountant.describe() if self.accountant else "DP off (noise multiplier 0)",
            "dp-epsilon": self.accountant.epsilon if self.accountant else None,
            # With secret sampling: ε with amplification by sampling (the one above is without).
            "dp-epsilon-amplified": self.amplified.epsilon if self.amplified else None,
            "uplink-bytes": sum(int(row.get("train-uplink-bytes", 0)) for row in self.lines),
            "settings": self.settings.as_dict(),
        }
        atomic.write_text(self.run_dir / "summary.json", json.dumps(summary, indent=2) + "\n", atomic.PRIVATE)
        try:
            write_plots(self.run_dir, self.lines, f"run {self.run_id}")
        except (FedgeError, OSError) as exc:  # plots are a view of metrics.jsonl: never fail a run
            log.warning("run %s: no plots (%s); `fedge run plot` redraws them", self.run_id, exc)
        self.report(EventKind.SUMMARY, summary)
        return summary


def _tensors(arrays: ArrayRecord) -> dict[str, torch.Tensor]:
    """Tensors over the arrays' own bytes: a checkpoint of a large model copies none of it.

    Read-only (the bytes are immutable): for ``load_state_dict`` and ``torch.save`` only.
    """
    with warnings.catch_warnings():  # torch warns that the arrays are not writable
        warnings.simplefilter("ignore", UserWarning)
        return {name: torch.from_numpy(array_view(array)) for name, array in arrays.items()}


def _sampling_rate(sampled: int, population: int) -> float:
    """q of one secretly sampled round: instructions sent (stand-ins for declines included) over
    the eligible nodes they were drawn from; 1.0 when the population is unknown (no claim)."""
    return min(1.0, sampled / population) if population > 0 and sampled > 0 else 1.0


#: Longest client error reason quoted in a run's failure (a reason is client-controlled text).
MAX_REASON = 2000


def _reasons(replies: list[Message], limit: int = 3) -> str:
    """`` (errors: node 7, node 9: …)`` from the failed replies, for the failure message.

    Nodes that failed the same way are named together and the reason is quoted once, whole (up
    to :data:`MAX_REASON` characters, cut at a word): a reason cut mid-word hides the fix.
    """
    by_reason: dict[str, list[str]] = {}
    for m in replies:
        if m.has_error():
            by_reason.setdefault(_clip((m.error.reason or "").strip()), []).append(
                f"node {m.metadata.src_node_id}"
            )
    parts = [f"{', '.join(nodes)}: {reason}" for reason, nodes in list(by_reason.items())[:limit]]
    return f" (errors: {'; '.join(parts)})" if parts else ""


def _clip(text: str) -> str:
    if len(text) <= MAX_REASON:
        return text
    return text[:MAX_REASON].rsplit(" ", 1)[0] + " …"


def _hint(replies: list[Message]) -> str:
    """The fix for a round without enough updates: the clients' own hint when they failed alike.

    A ``FedgeError`` raised in a ClientApp reaches the server as ``… (hint: HINT)'>`` in Flower's
    error-reason format (see :meth:`fedge.client.runtime.ClientRuntime.handle`).
    """
    errors = [m.error.reason or "" for m in replies if m.has_error()]
    hints = {_client_hint(reason) for reason in errors}
    if len(hints) == 1 and "" not in hints:
        return hints.pop()
    if errors:
        return "fix what the clients reported above, or lower --min-clients to go on without them"
    return "lower --min-clients or check the disconnected nodes"


def _client_hint(reason: str) -> str:
    _, sep, tail = reason.rpartition("(hint: ")
    return tail.removesuffix("'>").removesuffix(")").strip() if sep else ""
