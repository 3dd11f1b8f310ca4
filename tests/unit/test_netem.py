"""``--netem``: the profile syntax, its tc form, and the clear errors (root is needed for links)."""

from __future__ import annotations

import pytest

from fedge.errors import FedgeError
from fedge.sim import netem
from fedge.sim.netem import ImpairedNetwork, NetemSpec
from tests.conftest import fedge_cli


def test_parse_the_issue_profile() -> None:
    spec = NetemSpec.parse("delay=100ms jitter=20ms loss=2% rate=1mbit")
    assert spec == NetemSpec(delay=0.1, jitter=0.02, loss=0.02, rate=1_000_000)
    assert str(spec) == "delay=100ms jitter=20ms loss=2% rate=1mbit"
    assert spec.tc_netem_args() == ["delay", "100ms", "20ms", "loss", "2%", "rate", "1mbit"]
    imp = spec.impairment()
    assert (imp.delay, imp.jitter, imp.loss, imp.reset, imp.rto) == (0.1, 0.02, 0.02, 0.0, 0.2)


def test_parse_units_and_separators() -> None:
    spec = NetemSpec.parse(" delay=0.05s,reset=0.1%  rate=250kbps rto=300ms ")
    assert spec.delay == 0.05 and spec.reset == pytest.approx(0.001) and spec.rto == 0.3
    assert spec.rate == 2_000_000 and str(spec) == "delay=50ms reset=0.1% rate=2mbit"
    assert NetemSpec.parse("rate=1500kbit").tc_netem_args() == ["rate", "1500kbit"]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "empty"),
        ("delay=100", "not a time"),
        ("delay=1h", "not a time"),
        ("loss=2", "not a percentage"),
        ("loss=100%", "not a percentage"),
        ("rate=fast", "not a rate"),
        ("rate=1kbit", "below what tbf"),
        ("latency=5ms", "invalid --netem item"),
        ("delay=5ms delay=6ms", "twice"),
    ],
)
def test_bad_profiles_are_refused(text: str, match: str) -> None:
    with pytest.raises(FedgeError, match=match) as err:
        NetemSpec.parse(text)
    assert err.value.hint


def test_without_root_the_option_fails_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netem.os, "geteuid", lambda: 1000)
    with pytest.raises(FedgeError, match="--netem needs root") as err:
        with ImpairedNetwork(NetemSpec(delay=0.01), 1, "127.0.0.1:1"):
            pass
    assert "sudo" in err.value.hint


def test_without_iproute2_the_option_fails_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netem.os, "geteuid", lambda: 0)
    monkeypatch.setattr(netem.shutil, "which", lambda tool: None)
    with pytest.raises(FedgeError, match="needs ip and tc"):
        netem.check_can_impair()


def test_simulate_checks_netem_before_starting_anything() -> None:
    bad = fedge_cli("simulate", "--netem", "delay=fast", "--workdir", "/nonexistent/never-made")
    assert bad.returncode == 2 and "error: --netem delay='fast' is not a time" in bad.stderr
    ray = fedge_cli("simulate", "--netem", "delay=5ms", "--engine", "ray", "--workdir", "/nonexistent/x")
    assert ray.returncode == 2 and "needs --engine fedge" in ray.stderr and "hint:" in ray.stderr
    plain = fedge_cli("simulate", "--netem", "delay=5ms", "--insecure", "--workdir", "/nonexistent/x")
    assert plain.returncode == 2 and "plaintext" in plain.stderr
