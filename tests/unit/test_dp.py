"""Differential privacy: clipping bounds, noise calibration, ε against independent computations."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import (
    Bulyan,
    DifferentialPrivacyServerSideFixedClipping,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    Krum,
)
from flwr.supercore.task_identity import TaskIdentity

from fedge.errors import FedgeError
from fedge.security.dp import (
    DPError,
    DPSettings,
    PrivacyAccountant,
    clip_update,
    noise_share,
)
from fedge.strategies.central_dp import central_dp_strategy

DELTA = 1e-5


def _norm(arrays: list[np.ndarray]) -> float:
    return math.sqrt(sum(float(np.sum(a.astype(np.float64) ** 2)) for a in arrays))


# --- settings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"noise_multiplier": -0.1}, "noise multiplier must be a finite number >= 0, got -0.1"),
        ({"noise_multiplier": math.nan}, "noise multiplier must be a finite number >= 0, got nan"),
        ({"clip_norm": 0.0}, "clip norm must be a finite number > 0, got 0.0"),
        ({"clip_norm": math.inf}, "clip norm must be a finite number > 0, got inf"),
        ({"delta": 0.0}, "delta must be between 0 and 1 (exclusive), got 0.0"),
        ({"delta": 1.0}, "delta must be between 0 and 1 (exclusive), got 1.0"),
    ],
)
def test_settings_refuse_bad_values_with_a_hint(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(DPError) as err:
        DPSettings(**{"delta": DELTA, **kwargs})
    assert message in err.value.message
    assert err.value.hint
    assert isinstance(err.value, FedgeError)


def test_settings_enabled_only_with_noise() -> None:
    assert not DPSettings(delta=DELTA).enabled
    assert DPSettings(noise_multiplier=0.5, delta=DELTA).enabled


# --- clipping ---------------------------------------------------------------------------------


def test_clip_over_the_bound_lands_on_it_jointly_and_keeps_direction() -> None:
    rng = np.random.default_rng(1)
    delta = [rng.normal(size=(30, 40)).astype(np.float32), rng.normal(size=50) * 3.0]
    before = [a.copy() for a in delta]
    clipped, norm = clip_update(delta, clip_norm=2.0)
    assert norm == pytest.approx(_norm(before), rel=1e-12)
    assert _norm(clipped) <= 2.0
    assert _norm(clipped) == pytest.approx(2.0, rel=1e-5)
    factor = 2.0 / norm  # one factor for all arrays: the direction of the whole update is kept
    for got, orig in zip(clipped, before, strict=True):
        np.testing.assert_allclose(got, orig * factor, rtol=1e-5)
        assert got.dtype == orig.dtype and got.shape == orig.shape
    for arr, orig in zip(delta, before, strict=True):
        np.testing.assert_array_equal(arr, orig)  # inputs untouched


def test_clip_is_joint_not_per_array() -> None:
    # Each array alone (norm 0.8) is under the bound; together (norm 0.8*sqrt(2)) they are over it.
    delta = [np.full(4, 0.4), np.full(4, 0.4)]
    clipped, norm = clip_update(delta, clip_norm=1.0)
    assert norm == pytest.approx(0.8 * math.sqrt(2))
    np.testing.assert_allclose(clipped[0], np.full(4, 0.4 / norm))
    np.testing.assert_allclose(clipped[1], np.full(4, 0.4 / norm))


def test_clip_under_the_bound_returns_equal_copies() -> None:
    delta = [np.array([0.3, -0.4], np.float32), np.zeros((2, 2))]
    clipped, norm = clip_update(delta, clip_norm=1.0)
    assert norm == pytest.approx(0.5)
    for got, orig in zip(clipped, delta, strict=True):
        np.testing.assert_array_equal(got, orig)
        assert got is not orig and not np.shares_memory(got, orig)


def test_clip_lands_within_the_bound_for_float32_at_many_scales() -> None:
    rng = np.random.default_rng(2)
    for scale in (1e-3, 1.0, 1e3, 1e6):
        delta = [(rng.normal(size=1000) * scale).astype(np.float32) for _ in range(3)]
        clipped, _ = clip_update(delta, clip_norm=0.1)
        assert _norm(clipped) <= 0.1


@pytest.mark.parametrize(
    ("delta", "message"),
    [
        ([np.array([1.0, np.inf])], "not finite"),
        ([np.array([np.nan])], "not finite"),
        ([np.ones(2), np.array([3], np.int64)], "update array 1 has dtype int64"),
    ],
)
def test_clip_refuses_what_it_cannot_bound(delta: list[np.ndarray], message: str) -> None:
    with pytest.raises(DPError, match=message):
        clip_update(delta, clip_norm=1.0)


# --- distributed noise ------------------------------------------------------------------------

SIGMA, CLIP = 1.3, 0.7


@pytest.mark.parametrize(("contributors", "survivors"), [(5, 5), (4, 2), (3, 6)])
def test_sum_of_shares_has_the_target_std_scaled_by_survivors(contributors: int, survivors: int) -> None:
    settings = DPSettings(noise_multiplier=SIGMA, clip_norm=CLIP, delta=DELTA)
    rng = np.random.default_rng(3)
    like = [np.zeros(100_000, np.float32), np.zeros((100, 1000))]
    shares = [noise_share(like, settings, contributors, rng) for _ in range(survivors)]
    total = np.concatenate([sum(s[i] for s in shares).ravel() for i in range(2)])
    # sigma*C exactly when survivors == contributors; fewer survivors, less noise (the failure
    # the docstring warns about); more survivors, more.
    expected = SIGMA * CLIP * math.sqrt(survivors / contributors)
    assert np.std(total) == pytest.approx(expected, rel=0.01)
    assert abs(np.mean(total)) < 0.01
    assert [s.dtype for s in shares[0]] == [np.float32, np.float64]
    assert [s.shape for s in shares[0]] == [(100_000,), (100, 1000)]


def test_shares_are_zero_when_dp_is_off_and_draw_nothing() -> None:
    rng = np.random.default_rng(4)
    state = rng.bit_generator.state
    shares = noise_share([np.ones(3, np.float32)], DPSettings(delta=DELTA), 4, rng)
    np.testing.assert_array_equal(shares[0], np.zeros(3, np.float32))
    assert shares[0].dtype == np.float32
    assert rng.bit_generator.state == state


def test_shares_refuse_zero_contributors() -> None:
    with pytest.raises(DPError, match="min_contributors must be >= 1"):
        noise_share([np.ones(3)], DPSettings(noise_multiplier=1.0, delta=DELTA), 0, np.random.default_rng())


# --- accountant -------------------------------------------------------------------------------

ALPHAS = np.linspace(1.011, 300.0, 300_000)


def _classic_epsilon(rounds: int, sigma: float) -> float:
    """Mironov 2017, Prop. 3: ε = min over α of T·α/(2σ²) + log(1/δ)/(α − 1)."""
    return float(np.min(rounds * ALPHAS / (2 * sigma**2) + math.log(1 / DELTA) / (ALPHAS - 1)))


def _improved_epsilon(rdp: np.ndarray, alphas: np.ndarray) -> float:
    """The RDP → (ε, δ) conversion of Canonne et al. 2020 / Asoodeh et al. 2020, on our own grid."""
    return float(np.min(rdp + np.log1p(-1 / alphas) - np.log(DELTA * alphas) / (alphas - 1)))


@pytest.mark.parametrize("rounds", [1, 5, 10, 50])
def test_epsilon_for_full_participation_matches_an_independent_computation(rounds: int) -> None:
    eps = PrivacyAccountant(1.0, DELTA).step(rounds)
    classic = _classic_epsilon(rounds, 1.0)
    # The library's conversion is tighter than the classic one: by 11% at one round, 3% at 50.
    assert 0.85 * classic <= eps <= classic
    # Same RDP (α/2σ² per round), same conversion, our fine grid: the library's coarser grid can
    # only be slightly worse.
    improved = _improved_epsilon(rounds * ALPHAS / 2, ALPHAS)
    assert improved - 1e-9 <= eps <= improved * 1.005


def _log_a_subsampled(q: float, sigma: float, alpha: int) -> float:
    """log A_α of the Poisson-subsampled Gaussian for integer α (Mironov et al. 2019, §3.3)."""
    k = np.arange(alpha + 1)
    log_fact = np.array([math.lgamma(i + 1) for i in k])  # log i!
    log_binom = log_fact[alpha] - log_fact - log_fact[::-1]
    terms = log_binom + (alpha - k) * math.log1p(-q) + k * math.log(q) + (k * k - k) / (2 * sigma**2)
    return float(np.logaddexp.reduce(terms))


def test_epsilon_with_subsampling_matches_an_independent_computation() -> None:
    q, sigma, rounds = 0.1, 1.0, 100
    alphas = np.arange(2, 257, dtype=np.float64)
    rdp = np.array([rounds * _log_a_subsampled(q, sigma, int(a)) / (a - 1) for a in alphas])
    reference = _improved_epsilon(rdp, alphas)
    eps = PrivacyAccountant(sigma, DELTA, sampling_rate=q).step(rounds)
    # The library also tries fractional orders, so it may be a little lower, never higher.
    assert reference * 0.97 <= eps <= reference + 1e-9


def test_epsilon_grows_with_rounds_and_shrinks_with_subsampling() -> None:
    full, sampled = PrivacyAccountant(1.1, DELTA), PrivacyAccountant(1.1, DELTA, sampling_rate=0.1)
    assert full.epsilon == 0.0 and full.rounds == 0
    previous = 0.0
    for _ in range(20):
        eps = full.step()
        assert eps > previous and eps == full.epsilon
        previous = eps
        assert sampled.step() < eps
    assert full.rounds == 20
    chunked = PrivacyAccountant(1.1, DELTA)
    chunked.step(5)
    assert chunked.step(15) == pytest.approx(full.epsilon, rel=1e-12)


def test_harmless_library_warnings_stay_out_of_the_log(caplog: pytest.LogCaptureFixture) -> None:
    # At q=0.1, sigma=1 dp-accounting cannot evaluate a few fractional orders and says so on
    # every composition; those orders are left out, which only makes ε larger.
    with caplog.at_level(logging.WARNING):
        PrivacyAccountant(1.0, DELTA, sampling_rate=0.1).step()
    assert not [r for r in caplog.records if "failed to converge" in r.getMessage()]
    assert not logging.getLogger("absl").filters


def test_describe() -> None:
    accountant = PrivacyAccountant(1.1, DELTA)
    accountant.step(5)
    assert accountant.describe() == f"(ε={accountant.epsilon:.2f}, δ=1e-05)-DP after 5 rounds, σ=1.1, q=1.0"


def test_no_noise_means_no_guarantee() -> None:
    accountant = PrivacyAccountant(0.0, DELTA)
    assert accountant.epsilon == math.inf
    assert accountant.step(3) == math.inf and accountant.rounds == 3
    assert accountant.describe() == "DP off (noise multiplier 0)"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((1.0, DELTA, 0.0), "sampling rate must be in"),
        ((1.0, DELTA, 1.5), "sampling rate must be in"),
        ((-1.0, DELTA, 1.0), "noise multiplier"),
        ((1.0, 2.0, 1.0), "delta"),
    ],
)
def test_accountant_refuses_bad_parameters(args: tuple[float, float, float], message: str) -> None:
    with pytest.raises(DPError, match=message):
        PrivacyAccountant(*args)


def test_step_refuses_no_rounds() -> None:
    with pytest.raises(DPError, match="rounds must be >= 1"):
        PrivacyAccountant(1.0, DELTA).step(0)


# --- central DP -------------------------------------------------------------------------------


def test_central_dp_is_flowers_wrapper_with_our_parameters() -> None:
    inner = FedAvg(fraction_train=0.5)
    wrapped = central_dp_strategy(inner, DPSettings(noise_multiplier=1.2, clip_norm=0.8, delta=DELTA), 7)
    assert isinstance(wrapped, DifferentialPrivacyServerSideFixedClipping)
    assert wrapped.strategy is inner
    assert (wrapped.noise_multiplier, wrapped.clipping_norm, wrapped.num_sampled_clients) == (1.2, 0.8, 7)
    assert isinstance(
        central_dp_strategy(FedProx(), DPSettings(noise_multiplier=1.0, delta=DELTA), 2).strategy, FedProx
    )


@pytest.mark.parametrize("strategy", [FedMedian(), FedTrimmedAvg(), Krum(), Bulyan(), FedAdam(), FedAvgM()])
def test_central_dp_refuses_aggregates_that_are_not_a_mean(strategy: FedAvg) -> None:
    with pytest.raises(DPError, match=f"strategy {type(strategy).__name__}"):
        central_dp_strategy(strategy, DPSettings(noise_multiplier=1.0, delta=DELTA), 4)


def test_central_dp_refuses_dp_off_and_no_clients() -> None:
    with pytest.raises(DPError, match="noise multiplier > 0"):
        central_dp_strategy(FedAvg(), DPSettings(delta=DELTA), 4)
    with pytest.raises(DPError, match="num_sampled_clients must be >= 1"):
        central_dp_strategy(FedAvg(), DPSettings(noise_multiplier=1.0, delta=DELTA), 0)


@pytest.fixture
def _task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    for attr in ("_task_id", "_run_id", "_node_id"):
        monkeypatch.setattr(TaskIdentity, attr, 1)


def _reply(update: np.ndarray, num_examples: int) -> Message:
    instruction = Message(RecordDict(), dst_node_id=2, message_type="train")
    content = RecordDict(
        {
            "arrays": ArrayRecord({"w": Array(update.astype(np.float32))}),
            "metrics": MetricRecord({"num-examples": num_examples}),
        }
    )
    return Message(content, reply_to=instruction)


def _aggregate(sigma: float, sampled: int, replies: list[Message], size: int) -> np.ndarray:
    strategy = central_dp_strategy(
        FedAvg(), DPSettings(noise_multiplier=sigma, clip_norm=1.0, delta=DELTA), sampled
    )
    strategy.current_arrays = ArrayRecord({"w": Array(np.zeros(size, np.float32))})
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    return arrays["w"].numpy()


@pytest.mark.usefixtures("_task_identity")
def test_central_dp_averages_uniformly_whatever_the_clients_report() -> None:
    # Weighted by num-examples this would be (0.005, 0.495): the heavy client would move the mean
    # by almost C, not C/2, and its noise would be half of what is accounted.
    replies = [_reply(np.array([0.5, 0.0]), 1), _reply(np.array([0.0, 0.5]), 99)]
    np.testing.assert_allclose(_aggregate(1e-9, 2, replies, 2), [0.25, 0.25], atol=1e-6)


@pytest.mark.usefixtures("_task_identity")
@pytest.mark.parametrize("received", [4, 2])
def test_central_dp_noise_is_sigma_c_on_the_sum_of_the_replies_received(received: int) -> None:
    size, rng = 200_000, np.random.default_rng(5)
    # Tiny updates, not zeros: Flower's clipping divides by the update's norm.
    updates = [rng.normal(scale=1e-6, size=size) for _ in range(received)]
    noised = _aggregate(1.0, 4, [_reply(u, 10) for u in updates], size)
    # Noise on the mean of `received` updates = sigma*C/received (Flower alone: sigma*C/4).
    assert np.std(noised) == pytest.approx(1.0 / received, rel=0.02)


@pytest.mark.usefixtures("_task_identity")
def test_central_dp_refuses_integer_arrays_before_training() -> None:
    strategy = central_dp_strategy(FedAvg(), DPSettings(noise_multiplier=1.0, delta=DELTA), 2)
    arrays = ArrayRecord({"w": Array(np.zeros(2, np.float32)), "bn.n": Array(np.array(0, np.int64))})
    with pytest.raises(DPError, match="non-float arrays: bn.n"):
        strategy.configure_train(1, arrays, ConfigRecord(), grid=None)  # type: ignore[arg-type]
