"""How long a light client's one-sample request takes while a heavy client sends three requests at once
(issue 21, defect 1: one client's work made another's one-sample request wait behind all of it).

A served app (``textsr.app.launch``, concurrency 1, the built-in model): the heavy client submits three
requests of 16 samples x 60 steps, one second later the light client asks for 1 sample x 10 steps; the
table gives the light request's time and what became of the heavy ones. Compare two source trees on the
same machine by running it with each on PYTHONPATH (the textsr imported is the one measured):

    git archive main textsr | tar -x -C /tmp/textsr-main
    PYTHONPATH=/tmp/textsr-main OMP_NUM_THREADS=1 python bench/app_fairness.py --repeats 3
    OMP_NUM_THREADS=1 python bench/app_fairness.py --repeats 3
"""

from __future__ import annotations

import argparse
import socket
import statistics
import tempfile
import time

import numpy as np
import torch
from PIL import Image


def one_round(lr_path: str) -> tuple[float, list[str]]:
    from gradio_client import Client, handle_file

    from textsr.app import launch

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = launch(port=port, block=False, quiet=True, model_choices=["builtin-shapes"])
    try:
        def args(samples: int, steps: int) -> tuple:
            return (handle_file(lr_path), "a red circle", "", "", "builtin-shapes", "ddnm+", 8, samples, 0, False,
                    steps, "avgpool")

        heavy = Client(app.local_url, verbose=False)
        jobs = [heavy.submit(*args(16, 60), api_name="/explore") for _ in range(3)]
        time.sleep(1.0)
        t0 = time.perf_counter()
        Client(app.local_url, verbose=False).predict(*args(1, 10), api_name="/explore")
        light = time.perf_counter() - t0
        fates = []
        for j in jobs:
            try:
                j.result()
                fates.append("ran")
            except Exception:  # noqa: BLE001 - the gate's refusal reaches the client as an error
                fates.append("refused")
        return light, fates
    finally:
        app.close()
        app.textsr_workdir.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(1)
    import textsr

    d = tempfile.mkdtemp()
    Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(f"{d}/lr.png")
    rounds = [one_round(f"{d}/lr.png") for _ in range(a.repeats)]
    times = [r[0] for r in rounds]
    print(f"textsr from {textsr.__file__}")
    print("| light request (s), min | median | heavy client's 3 requests |")
    print("|---|---|---|")
    fates = ", ".join(f"{f.count('ran')} ran / {f.count('refused')} refused" for _, f in rounds)
    print(f"| {min(times):.1f} | {statistics.median(times):.1f} | {fates} |")


if __name__ == "__main__":
    main()
