"""fedge's ClientApp: local training and evaluation of a task on the node's private data.

Engine-agnostic Flower Message-API app: it runs inside the fedge edge daemon, on Flower's Ray
simulation engine and under a stock SuperNode. Settings come from ``context.run_config``
overlaid by the ``ConfigRecord`` at ``message.content["config"]``; fedge's ServerApp sends
everything a client needs there, so engines that give clients an empty ``run_config`` work too.

Local data (see :mod:`fedge.client.data`) is split once, deterministically by the run's seed,
into 80% for training and 20% held out for federated evaluation, so ``eval-acc`` measures the
global model on samples the node never trained on (nodes with < 5 samples use all for both).
Failures raise (``FedgeError`` for user-fixable ones); every runtime turns an exception into
an error reply that the server counts as a failed node.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch import nn

from fedge.client.data import load_local, split_local
from fedge.errors import FedgeError
from fedge.tasks import Arrays, Task, evaluate, load_task, train
from fedge.tasks.settings import TrainSettings
from fedge.tasks.trainable import CONFIG_KEY, freeze, load_received

app = ClientApp()


@app.train()
def train_fn(message: Message, context: Context) -> Message:
    """Train the received global model for ``local-epochs`` and reply with the new weights."""
    config = _config(message, context)
    settings = TrainSettings.from_config(config)
    task, (train_split, _) = _local_splits(settings, context, config)
    model, received = _received_model(task, message, config)
    started = time.perf_counter()
    result = train(
        model,
        *train_split,
        epochs=settings.local_epochs,
        lr=settings.lr,
        batch_size=settings.batch_size,
        seed=_train_seed(settings.seed, config, context),
        proximal_mu=_float(config.get("proximal-mu", 0.0), "proximal-mu"),
    )
    metrics = MetricRecord(
        {
            "train-loss": result["train-loss"],
            "num-examples": len(train_split[0]),
            "train-time": time.perf_counter() - started,
        }
    )
    # The reply carries what the instruction did: the trainable part alone, or everything.
    reply = {k: v for k, v in model.state_dict().items() if k in received}
    content = RecordDict({"arrays": ArrayRecord(reply), "metrics": metrics})
    return Message(content, reply_to=message)


@app.evaluate()
def evaluate_fn(message: Message, context: Context) -> Message:
    """Evaluate the received global model on this node's held-out local split."""
    config = _config(message, context)
    settings = TrainSettings.from_config(config)
    task, (_, eval_split) = _local_splits(settings, context, config)
    loss, accuracy = evaluate(_received_model(task, message, config)[0], *eval_split)
    metrics = MetricRecord({"eval-loss": loss, "eval-acc": accuracy, "num-examples": len(eval_split[0])})
    return Message(RecordDict({"metrics": metrics}), reply_to=message)


def _config(message: Message, context: Context) -> dict[str, Any]:
    config: dict[str, Any] = dict(context.run_config)
    config.update(message.content.config_records.get("config", ConfigRecord()))
    return config


def _local_splits(
    settings: TrainSettings, context: Context, config: dict[str, Any]
) -> tuple[Task, tuple[Arrays, Arrays]]:
    task = load_task(settings.task, model=settings.model)
    x, y = load_local(task, context.node_config, config)
    return task, split_local(x, y, settings.seed)


def _received_model(task: Task, message: Message, config: dict[str, Any]) -> tuple[nn.Module, set[str]]:
    """The task's model with the received arrays loaded, and their names (what the reply returns)."""
    arrays = message.content.array_records.get("arrays")
    if arrays is None:
        raise FedgeError(
            "message carries no model arrays under 'arrays'", "send the global model as content['arrays']"
        )
    model = task.build_model()
    freeze(task, model)
    state = arrays.to_torch_state_dict()
    try:
        load_received(task, model, state, config.get(CONFIG_KEY))
    except RuntimeError as exc:
        raise FedgeError(
            f"received weights do not fit task '{task.name}': {exc}",
            "make sure server and clients use the same task",
        ) from None
    return model, set(state)


def _train_seed(seed: int, config: dict[str, Any], context: Context) -> int:
    """Mix run seed, round and node so rounds and nodes shuffle differently yet reproducibly.

    Simulated nodes are identified by ``partition-id`` (Flower's node ids are random per run).
    """
    node = context.node_config.get("partition-id", context.node_id)
    node = node if isinstance(node, int) else context.node_id
    round_ = config.get("server-round", 0)
    round_ = round_ if isinstance(round_, int) else 0
    return int(np.random.SeedSequence([abs(seed), round_, abs(node)]).generate_state(1)[0])


def _float(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise FedgeError(f"'{key}' must be a number, got {value!r}", f"fix the type of '{key}'")
    return float(value)
