"""Run plots: valid PNGs that plot exactly the per-round metrics of ``metrics.jsonl``."""

from __future__ import annotations

import json
from pathlib import Path

from fedge.server.plots import read_metrics, write_plots
from tests.conftest import fedge_cli
from tests.png import png_info


def _metrics(run_dir: Path, rounds: int) -> list[dict]:
    lines = [{"round": 0, "central-accuracy": 0.1, "central-loss": 2.3, "seconds": 0.1}]
    for r in range(1, rounds + 1):
        lines.append(
            {
                "round": r,
                "train-loss": 1.0 / r,
                "eval-acc": 0.5 + r / 100,
                "eval-loss": 1.5 / r,
                "central-accuracy": 0.6 + r / 100,
                "central-loss": 1.2 / r,
                "train-replies": 3,
                "secure-aggregation": True,
            }
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return lines


def test_plots_hold_one_point_per_recorded_round(tmp_path: Path) -> None:
    lines = _metrics(tmp_path, 7)
    written = write_plots(tmp_path, lines, "run 1")
    assert sorted(p.name for p in written) == ["accuracy.png", "loss.png"]
    for path, plotted in written.items():
        info = png_info(path)
        assert (info.width, info.height) == (640, 400)
        assert json.loads(info.text["Description"]) == plotted  # what the image says it shows
    acc = written[tmp_path / "plots" / "accuracy.png"]
    assert {k: len(v) for k, v in acc.items()} == {"central-accuracy": 8, "eval-acc": 7}
    assert acc["eval-acc"][0] == [1.0, 0.51] and acc["central-accuracy"][0] == [0.0, 0.1]
    loss = written[tmp_path / "plots" / "loss.png"]
    assert {k: len(v) for k, v in loss.items()} == {"central-loss": 8, "train-loss": 7, "eval-loss": 7}


def test_a_run_without_such_metrics_still_gets_valid_plots(tmp_path: Path) -> None:
    written = write_plots(tmp_path, [{"round": 1, "mse": 0.2}], "run 2")
    assert all(plotted == {} for plotted in written.values())
    assert all(json.loads(png_info(path).text["Description"]) == {} for path in written)


def test_fedge_run_plot_redraws_from_a_run_dir_without_a_server(tmp_path: Path) -> None:
    _metrics(tmp_path / "run", 3)
    done = fedge_cli("run", "plot", "--run-dir", str(tmp_path / "run"))
    assert done.returncode == 0, done.stderr
    assert "accuracy.png  (central-accuracy: 4 points, eval-acc: 3 points)" in done.stdout
    assert png_info(tmp_path / "run" / "plots" / "loss.png").width == 640
    assert read_metrics(tmp_path / "run")[-1]["round"] == 3

    missing = fedge_cli("run", "plot", "--run-dir", str(tmp_path / "nowhere"))
    assert missing.returncode == 2
    assert "error: no metrics at" in missing.stderr and "hint: pass --run-dir" in missing.stderr
    neither = fedge_cli("run", "plot")
    assert neither.returncode == 2 and "give a run id or --run-dir" in neither.stderr
