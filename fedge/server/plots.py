"""``plots/accuracy.png`` and ``plots/loss.png`` of a run, drawn from its ``metrics.jsonl``.

Every metric whose name contains ``acc`` (``eval-acc``, ``central-accuracy``, …) goes on the
accuracy plot and every one containing ``loss`` (``train-loss``, ``eval-loss``,
``central-loss``) on the loss plot, one line per metric over the rounds that report it, so train,
client-eval and central-eval curves show up whenever the run recorded them — for any ServerApp
that writes fedge's metrics format.

Drawn with matplotlib's object API on the Agg canvas (no pyplot, no display, no global backend
state: safe in the server's worker and in the CLI). Each PNG carries the points it plots as
JSON in its ``Description`` text chunk, read back from the drawn lines, so the image says what
it shows (tests and tools check it without parsing pixels).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from fedge import atomic
from fedge.errors import FedgeError

#: file name -> (y-axis label, substring selecting the metrics drawn)
PLOTS = {"accuracy.png": ("accuracy", "acc"), "loss.png": ("loss", "loss")}
Points = list[list[float]]


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The per-round lines of ``run_dir/metrics.jsonl``."""
    path = run_dir / "metrics.jsonl"
    try:
        text = path.read_text()
    except OSError:
        raise FedgeError(
            f"no metrics at {path}", "pass --run-dir with the directory of a run of fedge's ServerApp"
        ) from None
    try:
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as exc:
        raise FedgeError(f"{path} is not JSON lines: {exc}", "the file was edited or cut short") from None


def series(lines: list[dict[str, Any]], fragment: str) -> dict[str, Points]:
    """``{metric: [[round, value], …]}`` for numeric metrics whose name contains ``fragment``."""
    found: dict[str, Points] = {}
    for line in lines:
        for key, value in line.items():
            if fragment in key and isinstance(value, (int, float)) and not isinstance(value, bool):
                found.setdefault(key, []).append([line["round"], float(value)])
    return found


def write_plots(run_dir: Path, lines: list[dict[str, Any]], title: str) -> dict[Path, dict[str, Points]]:
    """Draw and atomically write every plot of :data:`PLOTS`; returns what each one plots."""
    try:
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        raise FedgeError("matplotlib is not installed", "pip install matplotlib") from None
    written: dict[Path, dict[str, Points]] = {}
    for name, (label, fragment) in PLOTS.items():
        fig = Figure(figsize=(6.4, 4.0), dpi=100, layout="tight")
        ax = fig.add_subplot()
        for metric, points in series(lines, fragment).items():
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=metric)
        plotted = {
            str(line.get_label()): np.column_stack(
                [np.asarray(line.get_xdata(), dtype=float), np.asarray(line.get_ydata(), dtype=float)]
            ).tolist()
            for line in ax.get_lines()
        }
        if plotted:
            ax.legend()
        else:
            ax.text(0.5, 0.5, f"no {label} metrics", ha="center", va="center", transform=ax.transAxes)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        # Asynchronous runs number models by version (their rows carry it), not by round.
        unit = "version" if any("version" in line for line in lines) else "round"
        ax.set(xlabel=unit, ylabel=label, title=f"{title}: {label} per {unit}")
        ax.grid(alpha=0.3)
        buf = io.BytesIO()
        metadata = {"Title": f"{title}: {label}", "Description": json.dumps(plotted)}
        fig.savefig(buf, format="png", metadata=metadata)
        path = run_dir / "plots" / name
        atomic.write_bytes(path, buf.getvalue(), atomic.PRIVATE)
        written[path] = plotted
    return written
