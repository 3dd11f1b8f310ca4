"""fedge's ClientApp: local training and evaluation of a task on the node's private data.

Engine-agnostic Flower Message-API app: it runs inside the fedge edge daemon, on Flower's Ray
simulation engine and under a stock SuperNode. Settings come from ``context.run_config``
overlaid by the ``ConfigRecord`` at ``message.content["config"]``; fedge's ServerApp sends
everything a client needs there, so engines that give clients an empty ``run_config`` work too.

Training and evaluation go through the task (``Task.fit``/``Task.score``: its own functions or
fedge's loops) on the node's device: ``node_config["device"]`` (``fedge client start --device``;
``auto`` when unset, as on Ray, where ``--gpus-per-client`` makes a GPU visible). Replies always
carry CPU arrays, so the server never receives a tensor that lives on a device.

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
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch import nn

from fedge import accel
from fedge.apps import DEVICE_HINT
from fedge.client.data import load_local, split_local
from fedge.client.slowdown import slow_down
from fedge.errors import FedgeError
from fedge.fields import pick
from fedge.tasks import Data, Task, TrainContext, load_task
from fedge.tasks.settings import TrainSettings
from fedge.tasks.trainable import CONFIG_KEY, freeze, load_received
from fedge.tasks.training import num_examples

app = ClientApp()


@app.train()
def train_fn(message: Message, context: Context) -> Message:
    """Train the received global model for ``local-epochs`` and reply with the new weights."""
    config = _config(message, context)
    settings = TrainSettings.from_config(pick(config, TrainSettings))
    task, (train_split, _) = _local_splits(settings, context, config)
    model, received = _received_model(task, message, config)
    ctx = TrainContext(
        settings,
        seed=_train_seed(settings.seed, config, context),
        device=_device(context),
        proximal_mu=_float(config.get("proximal-mu", 0.0), "proximal-mu"),
    )
    started = time.perf_counter()
    result = task.fit(model, train_split, ctx)
    slow_down(context, time.perf_counter() - started)  # node config `slowdown` (trials)
    metrics = MetricRecord(
        {
            **{f"train-{key}": value for key, value in result.items()},
            "num-examples": num_examples(train_split),
            "train-time": time.perf_counter() - started,
        }
    )
    # The reply carries what the instruction did: the trainable part alone, or everything.
    reply = {k: v for k, v in cpu_state(model).items() if k in received}
    content = RecordDict({"arrays": ArrayRecord(reply), "metrics": metrics})
    return Message(content, reply_to=message)


@app.evaluate()
def evaluate_fn(message: Message, context: Context) -> Message:
    """Evaluate the received global model on this node's held-out local split."""
    config = _config(message, context)
    settings = TrainSettings.from_config(pick(config, TrainSettings))
    task, (_, eval_split) = _local_splits(settings, context, config)
    ctx = TrainContext(settings, seed=settings.seed, device=_device(context))
    result = task.score(_received_model(task, message, config)[0], eval_split, ctx)
    # "accuracy" is reported as eval-acc, the key fedge has always used for clients' accuracy.
    metrics = MetricRecord(
        {
            **{f"eval-{'acc' if key == 'accuracy' else key}": value for key, value in result.items()},
            "num-examples": num_examples(eval_split),
        }
    )
    return Message(RecordDict({"metrics": metrics}), reply_to=message)


def cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights on the CPU: what goes on the wire, whatever device trained them."""
    return {key: value.detach().cpu() for key, value in model.state_dict().items()}


def _config(message: Message, context: Context) -> dict[str, Any]:
    """The run config overlaid by the message's ``config`` record.

    Shared with the ServerApp (which validated the run config as a whole) and Flower's
    strategies (``server-round``, ``proximal-mu``): the ClientApp reads only its own keys.
    """
    config: dict[str, Any] = dict(context.run_config)
    config.update(message.content.config_records.get("config", ConfigRecord()))
    return config


def _local_splits(
    settings: TrainSettings, context: Context, config: dict[str, Any]
) -> tuple[Task, tuple[Data, Data]]:
    try:
        task = load_task(settings.task, model=settings.model)
    except FedgeError as exc:
        raise FedgeError(
            f"this device cannot load task '{settings.task}': {exc.message}", DEVICE_HINT
        ) from None
    return task, split_local(load_local(task, context.node_config, config), settings.seed)


def _device(context: Context) -> torch.device:
    return accel.torch_device(str(context.node_config.get("device", "auto")))


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
