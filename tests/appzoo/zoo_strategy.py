"""A custom legacy ``Strategy`` under ``LegacyContext`` + ``DefaultWorkflow`` (federated analytics).

After Flower's framework/e2e/e2e-pandas (``FedAnalytics``): clients answer the model with
histograms of their data — other arrays than they were sent — and the strategy sums them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.client import NumPyClient
from flwr.clientapp import ClientApp
from flwr.common import (
    Context,
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import Strategy
from flwr.server.workflow import DefaultWorkflow
from zoo_data import partition, save_result

BINS = np.linspace(-4, 4, 9)


class FedHistogram(Strategy):
    """Sums every client's histograms each round; evaluates nothing."""

    def __init__(self, run_config: Any) -> None:
        super().__init__()
        self.run_config = run_config
        self.rounds: dict[int, list[list[int]]] = {}

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return ndarrays_to_parameters([np.zeros(1)])

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        clients = client_manager.sample(num_clients=3, min_num_clients=3)
        return [(client, FitIns(parameters, {"column": server_round - 1})) for client in clients]

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        total = sum(parameters_to_ndarrays(res.parameters)[0] for _, res in results)
        self.rounds[server_round] = [np.asarray(total).tolist(), [len(results), len(failures)]]
        save_result(self.run_config, {"rounds": self.rounds})
        return ndarrays_to_parameters([np.asarray(total)]), {}

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        return []

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: list[tuple[ClientProxy, EvaluateRes] | BaseException],
    ) -> tuple[float | None, dict[str, Scalar]]:
        return None, {}

    def evaluate(self, server_round: int, parameters: Parameters) -> tuple[float, dict[str, Scalar]] | None:
        return None


class HistogramClient(NumPyClient):
    def __init__(self, partition_id: int) -> None:
        self.x, _ = partition(partition_id)

    def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> Any:
        hist, _ = np.histogram(self.x[:, int(config["column"])], bins=BINS)
        return [hist.astype(np.int64)], len(self.x), {}


def client_fn(context: Context) -> Any:
    return HistogramClient(int(context.node_config["partition-id"])).to_client()


client_app = ClientApp(client_fn=client_fn)
server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    legacy = LegacyContext(
        context=context,
        config=ServerConfig(num_rounds=int(context.run_config["num-server-rounds"])),
        strategy=FedHistogram(context.run_config),
    )
    DefaultWorkflow()(grid, legacy)
