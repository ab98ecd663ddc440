"""CPU time of ``textsr demo`` by torch thread count (issue 19 item 5): torch's own default (one thread
per core) against ``--threads 1`` and textsr's default (the CPUs not busy now).

    python bench/threads.py [--runs 3] [--json bench/results/threads.json]

Each run is a fresh ``python -m textsr.cli demo -q`` process (OMP_NUM_THREADS unset), the variants
interleaved run by run; CPU time is the child's user + system time (getrusage), wall time from the
parent.  The load average is printed with each run: on a shared machine the figures move with it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def torch_default_threads() -> int:
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"], env=_env(),
                         capture_output=True, text=True, check=True)
    return int(out.stdout)


def _env() -> dict:
    return {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}


def run_demo(threads: int | None, out: Path) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one demo run."""
    cmd = [sys.executable, "-m", "textsr.cli", "demo", "-q", "--overwrite", "-o", str(out)]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, env=_env(), check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    n = torch_default_threads()
    variants = {f"torch's default ({n} threads)": n, "--threads 1": 1, "textsr's default": None}
    rows: dict[str, list[tuple[float, float, float]]] = {k: [] for k in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.runs):
            for name, threads in variants.items():
                load = os.getloadavg()[0]
                cpu, wall = run_demo(threads, Path(tmp) / "out")
                rows[name].append((cpu, wall, load))
                print(f"run {r + 1} {name:<28} CPU {cpu:6.1f} s  wall {wall:6.1f} s  (load average {load:.1f})",
                      flush=True)
    print(f"\n{'variant':<28} {'CPU s min':>9} {'median':>7} {'wall s min':>10} {'median':>7}")
    summary = {}
    for name, vals in rows.items():
        cpu, wall = [v[0] for v in vals], [v[1] for v in vals]
        summary[name] = {"cpu_s": cpu, "wall_s": wall, "load": [v[2] for v in vals]}
        print(f"{name:<28} {min(cpu):9.1f} {statistics.median(cpu):7.1f} {min(wall):10.1f} "
              f"{statistics.median(wall):7.1f}")
    print(f"\n{os.cpu_count()} CPUs; textsr's default here: {summary and _textsr_default()} thread(s) at the end")
    if args.json:
        args.json.write_text(json.dumps({"cpus": os.cpu_count(), "torch_default_threads": n, "runs": summary},
                                        indent=2))


def _textsr_default() -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from textsr.console import default_threads

    os.environ.pop("OMP_NUM_THREADS", None)
    return default_threads()


if __name__ == "__main__":
    main()
