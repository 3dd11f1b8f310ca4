"""Flower's own SecAgg+: ``SecAggPlusWorkflow`` with ``secaggplus_mod``, one client dropping out.

After Flower's examples/flower-secure-aggregation. The client of the last partition fails its
round-1 fit after the key exchange, as a device that goes away mid-protocol: the server must
unmask the round from the others' shares (3 shares, threshold 2).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.client import NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.common import Context, ndarrays_to_parameters
from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from zoo_data import mse, partition, save_result, sgd


class RegressionClient(NumPyClient):
    def __init__(self, context: Context) -> None:
        self.partition_id = int(context.node_config["partition-id"])
        self.last = self.partition_id == int(context.node_config["num-partitions"]) - 1
        self.x, self.y = partition(self.partition_id)

    def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> Any:
        if self.last and config["server-round"] == 1:
            raise RuntimeError("this device went away in the middle of SecAgg+")
        w = sgd(parameters[0], self.x, self.y)
        return [w], len(self.y), {}

    def evaluate(self, parameters: list[np.ndarray], config: dict[str, Any]) -> Any:
        return mse(parameters[0], self.x, self.y), len(self.y), {}


def client_fn(context: Context) -> Any:
    return RegressionClient(context).to_client()


client_app = ClientApp(client_fn=client_fn, mods=[secaggplus_mod])
server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    x, y = partition(99)
    models: dict[int, list[float]] = {}

    def central(server_round: int, parameters: list[np.ndarray], config: dict[str, Any]) -> Any:
        models[server_round] = parameters[0].tolist()
        save_result(context.run_config, {"models": models})
        return mse(parameters[0], x, y), {}

    strategy = FedAvg(
        fraction_fit=1.0,
        fraction_evaluate=0.0,
        min_fit_clients=3,
        min_available_clients=3,
        initial_parameters=ndarrays_to_parameters([np.zeros(4)]),
        evaluate_fn=central,
        on_fit_config_fn=lambda server_round: {"server-round": server_round},
    )
    legacy = LegacyContext(
        context=context,
        config=ServerConfig(num_rounds=int(context.run_config["num-server-rounds"])),
        strategy=strategy,
    )
    workflow = SecAggPlusWorkflow(num_shares=3, reconstruction_threshold=2, max_weight=1000)
    DefaultWorkflow(fit_workflow=workflow)(grid, legacy)
