"""configapp: the ServerApp; every setting comes from ``[tool.flwr.app.config]``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = context.run_config
    strategy = FedAvg(
        fraction_train=float(config["fraction-train"]),
        fraction_evaluate=0.0,
        min_available_nodes=3,
        min_train_nodes=3,
    )
    initial = ArrayRecord({"w": Array(np.zeros(int(config["model.size"])))})
    result = strategy.start(grid, initial, num_rounds=int(config["num-server-rounds"]))
    if config.get("result-path"):
        seen = {k: config[k] for k in ("num-server-rounds", "local-epochs", "lr", "model.size")}
        Path(str(config["result-path"])).write_text(
            json.dumps({"w": result.arrays["w"].numpy().tolist(), "config": seen})
        )
