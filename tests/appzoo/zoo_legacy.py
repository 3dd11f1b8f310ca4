"""``ServerApp(server_fn=...)`` with a NumPyClient ``client_fn``: Flower's legacy API, unchanged.

After Flower's quickstart apps (framework/e2e/e2e-bare, examples/quickstart-*): FedAvg with
central evaluation; the data is a seeded regression sample instead of a download.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.client import NumPyClient
from flwr.clientapp import ClientApp
from flwr.common import Context, ndarrays_to_parameters
from flwr.server import ServerApp, ServerAppComponents, ServerConfig
from flwr.server.strategy import FedAvg
from zoo_data import mse, partition, save_result, sgd


class RegressionClient(NumPyClient):
    def __init__(self, partition_id: int) -> None:
        self.x, self.y = partition(partition_id)

    def get_parameters(self, config: dict[str, Any]) -> list[np.ndarray]:
        return [np.zeros(4)]

    def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> Any:
        w = sgd(parameters[0], self.x, self.y, lr=float(config["lr"]))
        return [w], len(self.y), {"train-mse": mse(w, self.x, self.y)}

    def evaluate(self, parameters: list[np.ndarray], config: dict[str, Any]) -> Any:
        return (
            mse(parameters[0], self.x, self.y),
            len(self.y),
            {"accuracy": 1.0 / (1.0 + mse(parameters[0], self.x, self.y))},
        )


def client_fn(context: Context) -> Any:
    return RegressionClient(int(context.node_config["partition-id"])).to_client()


client_app = ClientApp(client_fn=client_fn)


def server_fn(context: Context) -> ServerAppComponents:
    x, y = partition(99)
    models: dict[int, list[float]] = {}

    def central(server_round: int, parameters: list[np.ndarray], config: dict[str, Any]) -> Any:
        models[server_round] = parameters[0].tolist()
        save_result(context.run_config, {"models": models})
        return mse(parameters[0], x, y), {}

    strategy = FedAvg(
        fraction_fit=1.0,
        fraction_evaluate=1.0,
        min_fit_clients=3,
        min_evaluate_clients=3,
        min_available_clients=3,
        initial_parameters=ndarrays_to_parameters([np.zeros(4)]),
        evaluate_fn=central,
        on_fit_config_fn=lambda server_round: {"lr": 0.1},
    )
    return ServerAppComponents(
        strategy=strategy, config=ServerConfig(num_rounds=int(context.run_config["num-server-rounds"]))
    )


server_app = ServerApp(server_fn=server_fn)
