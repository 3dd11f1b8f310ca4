"""The large-model measurement of ``bench/large_model.py`` on NVIDIA FLARE 2.9 (SimEnv, POC).

Run with the FLARE venv's interpreter, not fedge's::

    /work/nvflare-venv/bin/python bench/peers/nvflare_large.py --model-mb 200 --clients 3 --rounds 2 \
        [--tensors 8] [--floor-gb 4] [--env sim|poc] [--workdir DIR]

FLARE's ``FedAvgRecipe`` (``nvflare.recipe.fedavg``, framework NUMPY, default in-process
client API executor) runs ``nvflare_large_client.py`` on ``clients`` sites, in ``SimEnv``
(``--env sim``, the default) or ``PocEnv`` (``--env poc``: a provisioned server and client
services on loopback, started fresh by each ``recipe.execute``, workspace under ``--workdir``):
site ``site-K`` adds ``K`` to every tensor and reports weight ``K``. The initial
model (``tensors`` float32 zero tensors, ``model-mb`` MB) comes from ``LargeModelPersistor``,
which also writes a summary of each saved global model.

Measurement: each run is driven by a fresh child process (``--child``); its whole process
tree (SimEnv: the simulator, its server and client processes) and, in POC mode, every process
whose command line names the POC workspace (the services run detached) is sampled every 50 ms
(``VmHWM``). A 1 MB, 1-round run first gives each process role its warm-up peak; the large
run's growth per process is its peak minus the warm-up peak of the same role (imports and
runtime do not count as model copies; POC's services are started afresh for each run too).
A watchdog kills the tree when ``MemAvailable`` drops below ``--floor-gb``.

Round wall times: between the persistor's ``save_model`` calls (FLARE saves the global
model after every round); the first round is measured from the initial model's load.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

HERE = Path(__file__).resolve().parent
MB = 1_000_000


def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable")


def hwm(pid: int) -> tuple[int, int] | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    vals = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            vals[key] = int(value.split()[0]) * 1024
    if "VmHWM" not in vals:
        return None
    return vals["VmHWM"], vals.get("VmRSS", 0)


def role_of(pid: int, root: int) -> str | None:
    """A stable name for a process of the simulation tree, from its command line."""
    if pid == root:
        return "driver (recipe.execute; launches the simulator or submits to POC)"
    try:
        cmd = psutil.Process(pid).cmdline()
    except psutil.Error:
        return None
    text = " ".join(cmd)
    module = next((c for c in cmd if c.startswith("nvflare.")), "") or next(
        (Path(c).name for c in cmd[1:] if c.endswith(".py")), Path(cmd[0]).name if cmd else "?"
    )
    site = ""
    kit = re.search(r"/prod_\d+/([^/\s]+)", text)  # POC: the participant's startup kit folder
    if kit:
        site = kit.group(1)
    for token in cmd if not site else []:
        if token.startswith("site-"):
            site = token
            break
    if not site:
        for part in text.split():
            if "site-" in part:
                site = part[part.index("site-") :].split("/")[0].split(",")[0]
                break
    return f"{module} {site}".strip()


def poc_pids(marker: str) -> list[int]:
    """Processes of a POC deployment: their command lines name its workspace."""
    out = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = p.info.get("cmdline") or []
        if any(marker in c for c in cmd):
            out.append(p.info["pid"])
    return out


def run_child(
    model_mb: float, clients: int, rounds: int, tensors: int, floor: int, work: Path, env: str = "sim"
) -> dict:
    result = work / f"result-{model_mb:g}.json"
    result.unlink(missing_ok=True)
    cmd = [
        sys.executable, str(Path(__file__).resolve()), "--child", "--model-mb", str(model_mb),
        "--clients", str(clients), "--rounds", str(rounds), "--tensors", str(tensors),
        "--result-path", str(result), "--workdir", str(work), "--env", env,
    ]  # fmt: skip
    marker = str(work / "poc") + "/"
    log = (work / f"child-{model_mb:g}.log").open("wb")
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    peaks: dict[int, int] = {}
    roles: dict[int, str] = {}
    cmds: dict[int, dict] = {}
    total_peak = 0
    tripped = ""
    detached: list[int] = []
    tick = 0
    while proc.poll() is None:
        try:
            family = [proc.pid, *(p.pid for p in psutil.Process(proc.pid).children(recursive=True))]
        except psutil.Error:
            family = []
        if env == "poc":  # POC services run detached from the driver: find them by workspace
            if tick % 5 == 0:
                detached = poc_pids(marker)
            family += [pid for pid in detached if pid not in family]
        tick += 1
        total = 0
        for pid in family:
            if pid not in roles:
                try:  # right after fork, before exec, a child still shows its parent's command line
                    if time.time() - psutil.Process(pid).create_time() < 0.5:
                        continue
                except psutil.Error:
                    continue
                role = role_of(pid, proc.pid)
                if role is None:
                    continue
                # Several processes can share a command line (the simulator's helpers):
                # number them in order of appearance, the same in the warm-up and large runs.
                same = sum(1 for r in roles.values() if r.split(" #")[0] == role)
                roles[pid] = f"{role} #{same}"
                try:
                    p = psutil.Process(pid)
                    cmds[pid] = {"ppid": p.ppid(), "cmd": " ".join(p.cmdline())[:400]}
                except psutil.Error:
                    pass
            got = hwm(pid)
            if got is not None:
                peaks[pid] = max(peaks.get(pid, 0), got[0])
                total += got[1]
        total_peak = max(total_peak, total)
        available = mem_available()
        if available < floor and not tripped:
            tripped = f"MemAvailable {available / 2**30:.1f} GiB < floor {floor / 2**30:.1f} GiB"
            kill_tree(proc)
        time.sleep(0.05)
    wall = time.perf_counter() - started
    log.close()
    kill_tree(proc)
    if env == "poc":  # whatever of the POC deployment outlived the run
        for pid in poc_pids(marker):
            try:
                psutil.Process(pid).kill()
            except psutil.Error:
                pass
    out = {"rc": proc.returncode, "wall_s": wall, "peaks": peaks, "roles": roles, "cmds": cmds}
    out["total_peak"] = total_peak
    if tripped:
        out["tripped"] = tripped
    if result.exists():
        out["result"] = json.loads(result.read_text())
    lines = (work / f"child-{model_mb:g}.log").read_text(errors="replace").splitlines()
    out["log_tail"] = "\n".join(lines[-25:])
    return out


def kill_tree(proc: subprocess.Popen) -> None:
    try:
        victims = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.Error:
        victims = []
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for p in victims:
        try:
            p.kill()
        except psutil.Error:
            pass
    proc.wait()


def child(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(HERE))
    from nvflare.fuel.utils.constants import FrameworkType
    from nvflare.recipe.fedavg import FedAvgRecipe
    from nvflare.recipe.sim_env import SimEnv
    from nvflare_large_persistor import LargeModelPersistor

    recipe = FedAvgRecipe(
        name=f"large-{args.model_mb:g}",
        min_clients=args.clients,
        num_rounds=args.rounds,
        train_script=str(HERE / "nvflare_large_client.py"),
        framework=FrameworkType.NUMPY,
        model_persistor=LargeModelPersistor(
            model_mb=args.model_mb, tensors=args.tensors, result_path=args.result_path
        ),
    )
    if args.env == "poc":
        os.environ["NVFLARE_POC_WORKSPACE"] = str(Path(args.workdir) / "poc")
        from nvflare.recipe.poc_env import PocEnv

        run = recipe.execute(PocEnv(num_clients=args.clients))
        assert run is not None
        run.get_result(timeout=3600.0, clean_up=False)
        print("POC job status:", run.get_status(), flush=True)
        return
    env = SimEnv(num_clients=args.clients, workspace_root=str(Path(args.workdir) / "sim"))
    recipe.execute(env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-mb", type=float, default=200.0)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--tensors", type=int, default=8)
    parser.add_argument("--floor-gb", type=float, default=4.0)
    parser.add_argument("--workdir", default="")
    parser.add_argument("--env", choices=["sim", "poc"], default="sim")
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--result-path", default="")
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    floor = int(args.floor_gb * 2**30)
    with tempfile.TemporaryDirectory(prefix="nvflare-large-") as tmp:
        work = Path(args.workdir) if args.workdir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        warm = run_child(1.0, args.clients, 1, args.tensors, floor, work, args.env)
        if warm["rc"] != 0 or "result" not in warm:
            raise SystemExit(f"warm-up run failed (rc {warm['rc']}):\n{warm['log_tail']}")
        big = run_child(args.model_mb, args.clients, args.rounds, args.tensors, floor, work, args.env)
    model = int(args.model_mb * MB) // 4 * 4
    warm_role: dict[str, int] = {}
    for pid, role in warm["roles"].items():
        warm_role[role] = max(warm_role.get(role, 0), warm["peaks"].get(pid, 0))
    processes = []
    for pid, role in sorted(big["roles"].items(), key=lambda kv: kv[1]):
        if pid not in big["peaks"]:
            continue
        grown = big["peaks"][pid] - warm_role.get(role, 0)
        processes.append(
            {
                "pid": pid,
                "role": role,
                **big["cmds"].get(pid, {}),
                "peak_mb": big["peaks"][pid] / MB,
                "warm_peak_mb": warm_role.get(role, 0) / MB,
                "growth_mb": grown / MB,
                "x_model": grown / model,
            }
        )
    offsets = list(range(1, args.clients + 1))
    expected = args.rounds * sum(n * n for n in offsets) / sum(offsets)
    out: dict = {
        "engine": "nvflare",
        "env": args.env,
        "nvflare": _version(),
        "model_mb": model / MB,
        "clients": args.clients,
        "rounds": args.rounds,
        "rc": big["rc"],
        "processes": processes,
        "total_rss_peak_mb": big["total_peak"] / MB,
        "child_wall_s": big["wall_s"],
        "expected": expected,
    }
    if "tripped" in big:
        out["stopped_by_watchdog"] = big["tripped"]
    if "result" in big:
        res = big["result"]
        marks = [res["loaded"], *res["saves"]]
        out["round_s"] = [b - a for a, b in zip(marks, marks[1:], strict=False)]
        finals = list(res["final"].values())
        out["final"] = res["final"]
        uniform = all(f["first"] == f["min"] == f["max"] for f in finals)
        err = max(max(abs(f["min"] - expected), abs(f["max"] - expected)) for f in finals)
        out["uniform"] = uniform
        out["max_abs_err"] = err
        out["exact"] = bool(uniform and err <= 4 * float(np.finfo(np.float32).eps) * expected)
    if big["rc"] != 0:
        out["log_tail"] = big["log_tail"]
    print(json.dumps(out, indent=2))


def _version() -> str:
    import nvflare

    return str(nvflare.__version__)


if __name__ == "__main__":
    main()
