"""A new user's first commands: version, completion, typos, unknown settings, validation order.

Each is a real ``fedge`` process; bad input still gives ``error:``/``hint:`` and exit 2, and fails
before any banner is printed or any directory is created.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, fedge_cli
from tests.integration.test_cli_errors import _assert_clean_error


def test_version() -> None:
    from importlib.metadata import version

    done = fedge_cli("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"fedge {version('fedge')}", done.stderr


def _fedge(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedge", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        cwd=REPO,
        timeout=60,
    )


def test_shell_completion_script_and_completions() -> None:
    # Typer detects the shell from the process tree (shellingham), which depends on how the test
    # was started; its documented test switch makes --show-completion take the shell by name.
    script = _fedge("--show-completion", "bash", _TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION="1")
    assert script.returncode == 0 and "_fedge_completion" in script.stdout, script.stderr
    done = _fedge(_FEDGE_COMPLETE="complete_bash", COMP_WORDS="fedge simulate --cl", COMP_CWORD="2")
    assert done.returncode == 0 and "--clients" in done.stdout.split(), done.stdout + done.stderr


def test_did_you_mean_is_printed_once() -> None:
    done = fedge_cli("simualte")
    _assert_clean_error(done, "No such command 'simualte'")
    assert done.stderr.count("Did you mean 'simulate'?") == 1, done.stderr


def test_verbose_is_a_documented_counter_on_every_command_that_runs_something() -> None:
    for command in (
        ["simulate"],
        ["server", "start"],
        ["client", "start"],
        ["run", "start"],
        ["model", "export"],
        ["run", "resume"],
    ):
        shown = fedge_cli(*command, "--help")
        assert shown.returncode == 0, shown.stderr
        assert "-v" in shown.stdout and "-vv" in shown.stdout, (command, shown.stdout)


def test_unknown_set_key_for_fedges_app_is_an_error_with_a_suggestion(tmp_path: Path) -> None:
    work = tmp_path / "sim"
    done = fedge_cli("simulate", "--set", "rounds=5", "--workdir", str(work))
    _assert_clean_error(done, "unknown key 'rounds' in run config")
    assert "did you mean 'num-server-rounds'?" in done.stderr
    assert "simulating" not in done.stderr and not work.exists()  # validated before banner and dirs
    typo = fedge_cli("run", "start", "--server", "127.0.0.1:9", "--insecure", "--set", "local-epoch=2")
    _assert_clean_error(typo, "unknown key 'local-epoch' in run config")
    assert "did you mean 'local-epochs'?" in typo.stderr


def test_simulate_validates_everything_before_the_banner_and_any_directory(tmp_path: Path) -> None:
    work = tmp_path / "sim"
    for args, needle in (
        (["--engine", "rya"], "unknown engine 'rya'"),
        (["--task", "nosuch.module:task"], "cannot import module 'nosuch.module'"),
        (["--gpus-per-client", "0.5"], "--gpus-per-client is for --engine ray"),
        (["--engine", "ray", "--gpus-per-client", "1.5"], "invalid --gpus-per-client 1.5"),
    ):
        done = fedge_cli("simulate", *args, "--workdir", str(work))
        _assert_clean_error(done, needle)
        assert "simulating" not in done.stderr and not work.exists(), args


def test_shipped_server_toml_fails_before_creating_anything(tmp_path: Path) -> None:
    state = tmp_path / "state"
    # As shipped, deploy/server.toml names a PKI directory this machine does not have.
    done = fedge_cli(
        "server", "start", "--config", str(REPO / "deploy" / "server.toml"), "--state-dir", str(state)
    )
    _assert_clean_error(done, "not found")
    assert not state.exists()


def test_bad_device_is_refused_before_anything_starts(tmp_path: Path) -> None:
    state = tmp_path / "state"
    done = fedge_cli("server", "start", "--insecure", "--state-dir", str(state), "--device", "tpu")
    _assert_clean_error(done, "invalid device 'tpu'")
    assert not state.exists()
    gpu = fedge_cli("client", "start", "--insecure", "--state-dir", str(state), "--device", "cuda:7")
    _assert_clean_error(gpu, "device cuda:7 is not available")
