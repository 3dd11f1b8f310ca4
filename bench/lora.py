"""LoRA fine-tuning vs full fine-tuning of the built-in char-LM: bytes per round and final loss.

    python bench/lora.py [--clients N] [--rounds N] [--json]

The same federation twice, in process (FedAvg weighted by examples, the clients' local training
is fedge's own loop, iid partitions of the ``charlm`` windows): once with only the LoRA adapters
trainable — what fedge sends for a task that marks them — and once with every parameter trainable
(full fine-tuning, the whole model on the wire). Bytes per round are the array payload both
ways (server → each client, each client → server); the wire adds framing, sealing and metrics
on top (``tests/e2e/test_trainable.py`` checks the server's byte counters on real daemons).
Loss is the central test split's cross-entropy after the last round.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _federate(task: Any, full: bool, clients: int, rounds: int) -> dict[str, Any]:
    import torch

    from fedge.tasks import evaluate, partition, task_data, train
    from fedge.tasks.trainable import trainable_state

    (x, y), (x_test, y_test) = task_data(task, 0)
    parts = partition(y, clients, "iid", 0)
    model = task.build_model()
    if full:
        model.requires_grad_(True)
    travels = list(model.state_dict()) if full else list(trainable_state(task, model.state_dict()))
    payload = sum(t.numel() * t.element_size() for k, t in model.state_dict().items() if k in travels)
    started = time.perf_counter()
    losses = []
    for rnd in range(1, rounds + 1):
        sent = {k: v.clone() for k, v in model.state_dict().items() if k in travels}
        total: dict[str, torch.Tensor] = {}
        weight = 0
        for c, idx in enumerate(parts):
            local = task.build_model()
            local.requires_grad_(False)
            for name, param in local.named_parameters():
                param.requires_grad_(name in travels)
            local.load_state_dict({**local.state_dict(), **sent})
            train(local, (x[idx], y[idx]), epochs=1, lr=0.05, batch_size=32, seed=rnd * 100 + c)
            for k in travels:
                total[k] = total.get(k, 0) + local.state_dict()[k].double() * len(idx)
            weight += len(idx)
        model.load_state_dict({**model.state_dict(), **{k: (v / weight).float() for k, v in total.items()}})
        losses.append(evaluate(model, (x_test, y_test))["loss"])
    return {
        "parameters-sent": sum(model.state_dict()[k].numel() for k in travels),
        "bytes-per-round": 2 * clients * payload,
        "loss-per-round": losses,
        "final-loss": losses[-1],
        "initial-loss": evaluate(task.build_model(), (x_test, y_test))["loss"],
        "seconds": time.perf_counter() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    import torch

    from fedge.tasks import load_task

    torch.set_num_threads(1)
    task = load_task("charlm")
    full_task = dataclasses.replace(task, trainable=())
    results = {
        "lora": _federate(task, False, args.clients, args.rounds),
        "full": _federate(full_task, True, args.clients, args.rounds),
    }
    results["bytes-ratio"] = results["lora"]["bytes-per-round"] / results["full"]["bytes-per-round"]
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"charlm, {args.clients} clients × {args.rounds} rounds, 1 local epoch, FedAvg")
    for name in ("lora", "full"):
        r = results[name]
        print(
            f"{name:5s} {r['parameters-sent']:7d} parameters sent, {r['bytes-per-round']:9d} B/round, "
            f"loss {r['initial-loss']:.3f} → {' → '.join(f'{v:.3f}' for v in r['loss-per-round'])}"
            f" ({r['seconds']:.0f}s)"
        )
    print(f"LoRA / full bytes per round: {results['bytes-ratio']:.3f}")


if __name__ == "__main__":
    main()
