"""Peak memory of a particle run against the number of particles (issue 21, defect 1).

Each row runs ``textsr.explore`` on the demo scene (built-in world, 8x, the two-stage cascade, one prompt)
with ``--samples`` samples x N particles in a fresh child process and reports the child's peak resident
memory (``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss``), its CPU and wall seconds, and how it ended (a
request the memory cap ``--cap-gb`` cannot hold ends in ``MemoryError`` / the allocator's message, or in
textsr's refusal before any work).  Few steps (``--steps``): the peak is reached in the first step.

    python bench/particle_memory.py --samples 16 --particles 1,4,16,64 --steps 2 [--cap-gb 12] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any


def _child(fn: Callable[..., Any], kwargs: dict, cap_gb: float | None, threads: int, out) -> None:
    if cap_gb:
        cap = int(cap_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    import torch

    torch.set_num_threads(threads)
    try:
        msg = {"ok": True, "result": fn(**kwargs)}
    except BaseException as e:  # noqa: BLE001 - reported to the parent: what ended the run is the measurement
        last = traceback.format_exception_only(type(e), e)[-1].strip()
        msg = {"ok": False, "error": last[:300]}
    use = resource.getrusage(resource.RUSAGE_SELF)  # this child alone (RUSAGE_CHILDREN's peak is a running max)
    out.send({**msg, "peak_gb": use.ru_maxrss / 2**20, "user_s": use.ru_utime, "sys_s": use.ru_stime})


def measure(fn: Callable[..., Any], kwargs: dict, cap_gb: float | None = None, threads: int = 1) -> dict:
    """Run ``fn(**kwargs)`` in a fresh process (spawned: nothing inherited but the arguments); its peak RSS
    (GiB), CPU seconds (user, system), wall seconds and what it returned or raised."""
    ctx = mp.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    t0 = time.perf_counter()
    p = ctx.Process(target=_child, args=(fn, kwargs, cap_gb, threads, send))
    p.start()
    p.join()  # the reply is small: the child's send does not block
    msg = recv.recv() if recv.poll(0) else {"ok": False, "error": f"killed (exit code {p.exitcode})"}
    wall = time.perf_counter() - t0
    if p.exitcode not in (0, None) and msg.get("ok"):
        msg = {"ok": False, "error": f"exit code {p.exitcode}"}
    return {"peak_gb": float("nan"), "user_s": float("nan"), "sys_s": float("nan"), **msg, "wall_s": wall,
            "exitcode": p.exitcode}


def demo_run(samples: int, particles: int, steps: int, batch_size: int | None = None) -> dict:
    from textsr import explore
    from textsr.demo import demo_image

    ex = explore(demo_image(), ["a red circle"], scale=8, particles=particles, samples=samples, steps=steps,
                 batch_size=batch_size)
    return {"log_z": ex.prompts[0].evidence.log_z}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--particles", default="1,4,16,64")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--cap-gb", type=float, help="address-space limit of each child (GiB)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    recs = []
    print(f"demo scene, explore, {args.samples} samples, {args.steps} steps per stage, cap "
          f"{args.cap_gb or 'none'} GiB, {args.threads} thread(s)")
    print("| particles | peak RSS (GiB) | user s | sys s | wall s | outcome |")
    print("|---|---|---|---|---|---|")
    for n in (int(v) for v in args.particles.split(",")):
        r = measure(demo_run, {"samples": args.samples, "particles": n, "steps": args.steps,
                               "batch_size": args.batch_size}, args.cap_gb, args.threads)
        recs.append({"particles": n, **r})
        outcome = f"log Z {r['result']['log_z']:.2f}" if r["ok"] else r["error"]
        print(f"| {n} | {r['peak_gb']:.2f} | {r['user_s']:.1f} | {r['sys_s']:.1f} | {r['wall_s']:.1f} | {outcome} |",
              flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(recs, f, indent=1)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
