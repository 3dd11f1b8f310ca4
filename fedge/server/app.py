"""fedge's ServerApp: federated training of a task with a Flower strategy, recorded per round.

Engine-agnostic Flower Message-API app: it runs on fedge's own ``FedgeGrid``, on Flower's Ray
simulation engine and under a stock SuperLink. The round loop is fedge's
:func:`fedge.strategies.run_rounds` (Flower's ``Strategy.start`` with the server round explicit
and stamped into every message); this app only

- reads :class:`RunSettings` from ``context.run_config``,
- sends clients everything they need in the train/evaluate ``ConfigRecord`` (the keys of
  :class:`fedge.tasks.settings.TrainSettings`), so clients need no ``run_config`` of their own,
- chooses the train exchange once: secure aggregation (``secagg``), or Flower's central-DP
  wrapper (``dp-noise``) with the plain exchange, or streaming aggregation, or plain,
- records every round with one observer (:class:`fedge.server.recorder.RoundRecorder`): reply
  counts (a round with fewer than ``min-clients`` valid updates fails the run clearly),
  ``checkpoints/round-NNNN.pt``, one line of ``metrics.jsonl``, a commit ``state/round-NNNN.ckpt``
  (model, strategy state, RNG states, metrics), the privacy spent (ε at δ) and a
  ``round-finished`` report; at the end ``summary.json``, ``plots/*.png`` and a ``summary``
  report. Every file write is atomic.
- evaluates centrally on the server's device (``context.node_config["device"]``, set by
  ``fedge server start --device``; ``auto`` elsewhere); aggregation stays on the CPU.
- with ``mode = "async"``, runs buffered asynchronous aggregation instead of rounds
  (:class:`fedge.strategies.buffered.BufferedLoop`): the same recorder numbers each model
  version where a round would be;
- with ``resume = true`` (``fedge run resume``), continues from the newest good commit in the
  run directory with the rounds an uninterrupted run would have run next (clients seed their
  training with the round number), so a deterministic task ends with the same model.
"""

from __future__ import annotations

import logging
import random

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg, Strategy

from fedge import accel
from fedge.server.recorder import RoundRecorder
from fedge.server.reporting import reporter_of
from fedge.server.run_settings import RunSettings
from fedge.strategies import (
    PlainExchange,
    SecureExchange,
    StreamingExchange,
    TrainExchange,
    build_strategy,
    can_stream,
    run_rounds,
)
from fedge.strategies.buffered import BufferedLoop
from fedge.strategies.central_dp import central_dp_strategy
from fedge.tasks import load_task
from fedge.tasks.trainable import CONFIG_KEY, frozen_digest, trainable_state

log = logging.getLogger(__name__)

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run ``num-server-rounds`` rounds of the configured strategy and record every round."""
    settings = RunSettings.from_run_config(context.run_config, context.run_id)
    task = load_task(settings.train.task, model=settings.train.model)
    strategy, exchange = _strategy_and_exchange(settings)
    seed = settings.train.seed
    torch.manual_seed(seed)
    # Flower samples nodes with the `random` module (with `secret-sampling`, fedge's grid hands
    # it node lists in an order from the OS's CSPRNG, so the sample is secret all the same).
    random.seed(seed)
    model = task.build_model().state_dict()
    # Only what trains travels (fedge.tasks.trainable): the frozen part stays on the devices,
    # checked by its hash in every instruction; `send-frozen` sends it anyway (the baseline).
    sent = model if settings.send_frozen else trainable_state(task, model)
    arrays = ArrayRecord(dict(sent))
    base = model if task.trainable else None
    device = accel.torch_device(str(context.node_config.get("device", "auto")))
    recorder = RoundRecorder(
        settings,
        task,
        strategy,
        context.run_id,
        reporter_of(grid),
        device,
        base,
        stats=getattr(grid, "round_stats", None),  # fedge's grid: uplink bytes, declines, population
    )
    config = settings.train.to_config()
    if task.trainable:
        config[CONFIG_KEY] = frozen_digest(task, model)
    if settings.resume:
        done, arrays = recorder.resume()
    else:
        done = 0
        recorder.finished(0, arrays)  # round 0: the initial model, evaluated and committed
    log.info(
        "run %s: %s on %s for %d rounds (central evaluation on %s)",
        context.run_id,
        settings.strategy,
        task.name,
        settings.num_server_rounds,
        device,
    )
    if settings.mode == "async":
        assert isinstance(strategy, FedAvg)  # RunSettings: async runs fedavg only
        loop = BufferedLoop(
            strategy,
            settings.buffer_size,
            settings.max_staleness,
            settings.min_clients,
            settings.max_examples,
        )
        loop.run(
            grid,
            arrays,
            done,
            settings.num_server_rounds,
            timeout=settings.round_timeout,
            train_config=ConfigRecord(config),
            observer=recorder,
        )
        recorder.finish()
        return
    run_rounds(
        grid,
        strategy,
        exchange,
        arrays,
        range(done + 1, settings.num_server_rounds + 1),
        timeout=settings.round_timeout,
        train_config=ConfigRecord(config),
        evaluate_config=ConfigRecord(config),
        observer=recorder,
    )
    recorder.finish()


def _strategy_and_exchange(settings: RunSettings) -> tuple[Strategy, TrainExchange]:
    """The run's strategy and its train exchange, chosen once (see :mod:`fedge.strategies.exchange`)."""
    strategy = build_strategy(settings.strategy, settings.strategy_config())
    if settings.secagg:
        return strategy, SecureExchange(strategy, settings.secagg_settings(), settings.min_clients)
    if settings.dp.enabled:
        return central_dp_strategy(strategy, settings.dp, settings.min_clients), PlainExchange()
    if settings.streaming and can_stream(strategy):
        return strategy, StreamingExchange(strategy, settings.max_examples)
    return strategy, PlainExchange()
