"""Secret sampling, stand-ins for declining devices and per-round transport counts (FedgeGrid)."""

from __future__ import annotations

import random
import secrets
import threading

import pytest
from flwr.app import Error, Message
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from fedge.codec import decode_message, encode_message
from fedge.eligibility import DECLINED
from fedge.errors import FedgeError
from fedge.security.dp import PrivacyAccountant
from fedge.server.grid import FedgeGrid
from fedge.server.router import Router, Session
from tests.unit.test_router_grid import RouterLink, _answer, _message, instruction_chunks


@pytest.fixture(autouse=True)
def _identity() -> None:
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 7, 1


def _decline(router: Router, session: Session) -> None:
    """Act as a device that no longer qualifies."""
    frames = instruction_chunks(session)
    msg = decode_message(b"".join(f.data for f in frames))
    reply = Message(Error(code=DECLINED, reason="declined: charging is no"), reply_to=msg)
    router.deliver(session.node_id, frames[0].message_id, encode_message(reply))


def _fleet(count: int) -> tuple[Router, list[Session]]:
    router = Router()
    sessions = [Session(node_id, f"n{node_id}", "p") for node_id in range(2, 2 + count)]
    for s in sessions:
        router.open(s)
    return router, sessions


def test_a_declining_device_is_replaced_and_its_stand_in_answers_for_it() -> None:
    router, (declining, sampled, spare) = _fleet(3)
    grid = FedgeGrid(RouterLink(router), Run.create_empty(7))
    grid.get_node_ids()
    threading.Thread(target=_decline, args=(router, declining), daemon=True).start()
    threading.Thread(target=_answer, args=(router, sampled, 2.0), daemon=True).start()
    threading.Thread(target=_answer, args=(router, spare, 3.0), daemon=True).start()
    batch = [_message(declining.node_id), _message(sampled.node_id)]
    replies = list(grid.send_and_receive(batch, timeout=30))
    assert not any(r.has_error() for r in replies)
    by_src = {r.metadata.src_node_id: r for r in replies}
    assert set(by_src) == {sampled.node_id, spare.node_id}
    # The stand-in's reply answers the declined instruction, so exchanges find its instruction.
    assert by_src[spare.node_id].metadata.reply_to_message_id == batch[0].metadata.message_id
    stats = grid.round_stats(1)
    assert stats["train-declined"] == 1 and stats["train-replaced"] == 1 and stats["sampled-from"] == 3
    assert stats["train-uplink-bytes"] > 2 * 16  # three replies' bytes as received, two with arrays


def test_a_decline_with_nobody_left_passes_through_as_a_decline() -> None:
    router, (declining, sampled) = _fleet(2)
    grid = FedgeGrid(RouterLink(router), Run.create_empty(7))
    threading.Thread(target=_decline, args=(router, declining), daemon=True).start()
    threading.Thread(target=_answer, args=(router, sampled, 2.0), daemon=True).start()
    replies = list(
        grid.send_and_receive([_message(declining.node_id), _message(sampled.node_id)], timeout=30)
    )
    errors = [r for r in replies if r.has_error()]
    assert len(errors) == 1 and errors[0].error.code == DECLINED
    assert grid.round_stats(1)["train-replaced"] == 0


def test_secret_sampling_hands_out_node_lists_in_a_secret_order() -> None:
    router, _ = _fleet(12)
    plain = FedgeGrid(RouterLink(router), Run.create_empty(7))
    assert list(plain.get_node_ids()) == sorted(router.node_ids())
    secret = FedgeGrid(RouterLink(router), Run.create_empty(7), sampler=secrets.SystemRandom())
    orders = {tuple(secret.get_node_ids()) for _ in range(5)}
    assert len(orders) > 1 and all(sorted(o) == sorted(router.node_ids()) for o in orders)
    # Flower's seeded `random.sample` over a secretly shuffled list: the seed no longer decides.
    picks = set()
    for _ in range(5):
        random.seed(0)
        picks.add(tuple(sorted(random.sample(list(secret.get_node_ids()), 3))))
    assert len(picks) > 1


def test_a_filtered_run_short_of_nodes_names_its_filter() -> None:
    router, _ = _fleet(1)
    grid = FedgeGrid(
        RouterLink(router), Run.create_empty(7), node_wait_timeout=0.0, eligibility='--require "idle"'
    )
    grid.get_node_ids()
    with pytest.raises(FedgeError) as err:
        grid.get_node_ids()
    assert '1 connected node matches the run\'s filter --require "idle"' in err.value.message


def test_amplification_by_secret_sampling_lowers_epsilon() -> None:
    plain, amplified = PrivacyAccountant(1.0, 1e-5), PrivacyAccountant(1.0, 1e-5)
    for _ in range(5):
        eps = plain.step()
        eps_q = amplified.step(sampling_rate=0.1)
    assert 0 < eps_q < eps / 2, (eps_q, eps)
