"""fedge's ServerApp: federated training of a task with a Flower strategy, recorded per round.

Engine-agnostic Flower Message-API app: it runs on fedge's own ``FedgeGrid``, on Flower's Ray
simulation engine and under a stock SuperLink. The round loop is Flower's own
``Strategy.start``; this app only

- reads :class:`RunSettings` from ``context.run_config``,
- sends clients everything they need in the train/evaluate ``ConfigRecord`` (the keys of
  :class:`fedge.tasks.settings.TrainSettings`), so clients need no ``run_config`` of their own,
- wraps the strategy in :class:`fedge.strategies.SecureAggregation` (``secagg``) or, without it,
  in Flower's central-DP wrapper (``dp-noise``), and reports the privacy spent (ε at δ) per round,
- hooks the strategy's aggregation to count replies and fail the run when a round gets fewer
  than ``min-clients`` valid updates (a run must fail clearly, not limp on), and
- writes, per round (0 = initial model): ``checkpoints/round-NNNN.pt``, one line of
  ``metrics.jsonl``, a commit ``state/round-NNNN.ckpt`` (:mod:`fedge.server.commit`: model,
  strategy state, RNG states, metrics) and a ``round-finished`` report; at the end
  ``summary.json``, ``plots/*.png`` and a ``summary`` report. Every file write is atomic.
- with ``resume = true`` (``fedge run resume``), continues from the newest good commit in the
  run directory, sending the same round numbers as an uninterrupted run would (clients seed
  their training with them), so a deterministic task ends with the same model.
"""

from __future__ import annotations

import io
import json
import logging
import random
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.exception import AggregationError, InconsistentMessageReplies
from flwr.serverapp.strategy import Strategy

from fedge import atomic
from fedge.errors import FedgeError
from fedge.security.dp import PrivacyAccountant, central_dp_strategy
from fedge.server.commit import CommitStore
from fedge.server.plots import write_plots
from fedge.server.reporting import report
from fedge.server.run_settings import RunSettings
from fedge.server.snapshot import restore_rng, restore_strategy, rng_state, strategy_state
from fedge.strategies import SecureAggregation, build_strategy
from fedge.strategies._driver import contributors
from fedge.strategies.streamed import StreamingAggregation, can_stream
from fedge.tasks import Task, evaluate, load_task, task_data

log = logging.getLogger(__name__)

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run ``num-server-rounds`` rounds of the configured strategy and record every round."""
    settings = RunSettings.from_run_config(context.run_config, context.run_id)
    task = load_task(settings.train.task)
    strategy = build_strategy(settings.strategy, settings.strategy_config())
    if settings.secagg:
        strategy = SecureAggregation(strategy, settings.secagg_settings(), settings.min_clients)
    elif settings.dp.enabled:
        strategy = central_dp_strategy(strategy, settings.dp, settings.min_clients)
    elif settings.streaming and can_stream(strategy):
        strategy = StreamingAggregation(strategy)
    seed = settings.train.seed
    torch.manual_seed(seed)
    random.seed(seed)  # Flower samples nodes with the `random` module
    initial = ArrayRecord(task.build_model().state_dict())
    recorder = RoundRecorder(settings, task, Path(settings.run_dir), context.run_id)
    recorder.install(strategy)
    if settings.resume:
        initial = recorder.resume()
    log.info(
        "run %s: %s on %s for %d rounds",
        context.run_id,
        settings.strategy,
        task.name,
        settings.num_server_rounds,
    )
    strategy.start(
        grid=grid,
        initial_arrays=initial,
        num_rounds=settings.num_server_rounds - recorder.offset,
        timeout=settings.round_timeout,
        train_config=ConfigRecord(settings.train.to_config()),
        evaluate_config=ConfigRecord(settings.train.to_config()),
        evaluate_fn=recorder.evaluate,
    )
    recorder.finish()


class RoundRecorder:
    """Per-round bookkeeping: reply counts, metrics, checkpoints, reports.

    Installed as instance attributes over the strategy's ``configure_*``/``aggregate_*``
    methods (each calls the original), so any Flower strategy can be recorded unchanged.
    ``evaluate`` is Flower's ``evaluate_fn``: it runs once before round 1 and after every round,
    which makes it the point where a round is complete — and is committed.

    Resuming after round ``offset``: Flower's ``Strategy.start`` always counts from 1, so every
    hook adds ``offset`` to the round it is given, and ``start``'s evaluation of its initial
    arrays (the committed model, already recorded) is skipped.
    """

    def __init__(self, settings: RunSettings, task: Task, run_dir: Path, run_id: int) -> None:
        self.settings = settings
        self.task = task
        self.run_dir = run_dir
        self.run_id = run_id
        self.lines: list[dict[str, Any]] = []
        self.pending: dict[str, Any] = {}
        self.sent = {"train": 0, "eval": 0}
        self.started = self.round_started = time.perf_counter()
        self.strategy_name = settings.strategy
        self.strategy: Strategy | None = None
        self.commits = CommitStore(run_dir / "state")
        self.offset = 0
        self.resumed = False
        self.accountant = (
            # q = 1: node sampling is seeded from the run config, so it is neither random nor
            # secret, and amplification by sampling must not be claimed.
            PrivacyAccountant(settings.dp_noise, settings.dp_delta, sampling_rate=1.0)
            if settings.dp.enabled
            else None
        )

    def install(self, strategy: Strategy) -> None:
        """Wrap ``strategy``'s hooks (on the instance only) to observe every round."""
        self.strategy, self.strategy_name = strategy, type(strategy).__name__
        required = int(getattr(strategy, "min_train_nodes", self.settings.min_clients))
        configure_train, configure_evaluate = strategy.configure_train, strategy.configure_evaluate
        aggregate_train, aggregate_evaluate = strategy.aggregate_train, strategy.aggregate_evaluate

        def counted(stage: str, configure: Any) -> Any:
            def wrapper(
                server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
            ) -> list[Message]:
                messages = list(configure(server_round + self.offset, arrays, config, grid))
                self.sent[stage] = len(messages)
                return messages

            return wrapper

        def on_train(
            server_round: int, replies: Iterable[Message]
        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
            server_round += self.offset
            # Node order, not arrival order: float sums then do not depend on network timing.
            replies = sorted(replies, key=lambda m: m.metadata.src_node_id)
            valid = self._count("train", replies)
            if valid < required:
                raise FedgeError(
                    f"round {server_round}: only {valid} of the {required} required clients "
                    f"returned an update{_reasons(replies)}",
                    "lower --min-clients or check the disconnected nodes",
                )
            try:
                arrays, metrics = aggregate_train(server_round, replies)
            except (InconsistentMessageReplies, AggregationError) as exc:
                raise FedgeError(
                    f"round {server_round}: cannot aggregate the updates: {exc}",
                    "every train reply must carry one ArrayRecord with the same keys and one "
                    "MetricRecord with 'num-examples'",
                ) from None
            if arrays is None and valid:
                raise FedgeError(
                    f"round {server_round}: {self.strategy_name} produced no model from {valid} updates",
                    "check the strategy parameters against the number of clients "
                    "(e.g. bulyan needs 4*num-malicious-nodes + 3 updates)",
                )
            self.pending.update(dict(metrics or {}))
            if self.accountant is not None:
                # One more release of the noised aggregate: the privacy spent so far, per round.
                self.pending["dp-epsilon"] = self.accountant.step()
                self.pending["dp-delta"] = self.settings.dp_delta
            return arrays, metrics

        def on_evaluate(server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
            server_round += self.offset
            replies = list(replies)
            self._count("eval", replies)
            metrics = aggregate_evaluate(server_round, replies)
            self.pending.update(dict(metrics or {}))
            return metrics

        strategy.configure_train = counted("train", configure_train)  # type: ignore[method-assign]
        strategy.configure_evaluate = counted("eval", configure_evaluate)  # type: ignore[method-assign]
        strategy.aggregate_train = on_train  # type: ignore[method-assign]
        strategy.aggregate_evaluate = on_evaluate  # type: ignore[method-assign]

    def _count(self, stage: str, replies: list[Message]) -> int:
        # A secure-aggregation reply stands for every client folded into it.
        valid = sum(contributors(m) for m in replies)
        self.pending[f"{stage}-replies"] = valid
        self.pending[f"{stage}-failures"] = max(self.sent[stage] - valid, sum(m.has_error() for m in replies))
        return valid

    def evaluate(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Central evaluation, checkpoint, metrics line and commit for a finished round."""
        if self.resumed and server_round == 0:
            return None
        server_round += self.offset
        state = arrays.to_torch_state_dict()
        central = MetricRecord()
        if self.settings.central_eval:
            model = self.task.build_model()
            model.load_state_dict(state)
            _, (x_test, y_test) = task_data(self.task, self.settings.train.seed)
            central["central-loss"], central["central-accuracy"] = evaluate(model, x_test, y_test)
        buf = io.BytesIO()
        torch.save(state, buf)
        atomic.write_bytes(self.checkpoint(server_round), buf.getvalue())
        now = time.perf_counter()
        line = {
            "round": server_round,
            **self.pending,
            **central,
            "round-seconds": now - self.round_started,
            "seconds": now - self.started,
        }
        self.lines.append(line)
        self.pending, self.round_started = {}, now
        assert self.strategy is not None, "install() the recorder before the first round"
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
        report("round-finished", round=server_round, num_rounds=self.settings.num_server_rounds, metrics=line)
        return central if central else None

    def resume(self) -> ArrayRecord:
        """Restore the newest good commit; returns its global arrays (the model to continue from)."""
        assert self.strategy is not None, "install() the recorder before resuming"
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
        self.offset, self.resumed = commit.round, True
        self.started = time.perf_counter() - float(self.lines[-1].get("seconds", 0.0))
        if self.accountant is not None and commit.round:
            self.accountant.step(commit.round)
        self._write_metrics()
        log.info("run %s: resuming after round %d from %s", self.run_id, commit.round, commit.path)
        return state["arrays"]  # type: ignore[no-any-return]

    def _write_metrics(self) -> None:
        atomic.write_text(
            self.run_dir / "metrics.jsonl", "".join(json.dumps(row) + "\n" for row in self.lines)
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
            "task": self.task.name,
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
            "settings": self.settings.as_dict(),
        }
        atomic.write_text(self.run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        try:
            write_plots(self.run_dir, self.lines, f"run {self.run_id}")
        except (FedgeError, OSError) as exc:  # plots are a view of metrics.jsonl: never fail a run
            log.warning("run %s: no plots (%s); `fedge run plot` redraws them", self.run_id, exc)
        report("summary", **summary)
        return summary


def _reasons(replies: list[Message], limit: int = 3) -> str:
    """`` (errors: node 7: …)`` from the first failed replies, for the failure message."""
    errors = [
        f"node {m.metadata.src_node_id}: {(m.error.reason or '').strip()[:200]}"
        for m in replies
        if m.has_error()
    ]
    return f" (errors: {'; '.join(errors[:limit])})" if errors else ""
