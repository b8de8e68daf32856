"""Where a CPU MeZO step's memory goes: live heap against what glibc's heap keeps, per backend.

    OMP_NUM_THREADS=2 python bench/bench_heap.py --backends native compile --repeats 2 --steps 30 \
        --json bench/results/heap.json
    OMP_NUM_THREADS=2 python bench/bench_heap.py --backends native forwards --repeats 2 --steps 30 \
        --json bench/results/heap_vs_inference.json

The default run's steps (SmolLM2-135M-Instruct fp32, its SST-2 batches, seeds and numerics; see
bench/default_steps.py), each backend in processes of its own (a heap's state is the history of
its process), the backends alternating repeat by repeat. A thread samples every 2 ms, and a
step's record keeps the largest value of its samples:
* live: bytes glibc's allocator has handed out and not yet taken back (mallinfo2: uordblks, the
  main heap, + hblkhd, blocks mapped on their own): what the step's tensors hold;
* heap: the size of the main heap (mallinfo2: arena), which holds freed blocks until they are
  reused or trimmed from its top;
* RSS: the process's resident memory (psutil, as mezo.telemetry's memory log reads it).
Other threads' heaps are not in live or heap (they are in RSS). mallinfo2 needs glibc >= 2.33.
`--backends ... forwards` adds inference for comparison: each step's batch scored twice by the
default run's loss (its forwards of 2 rows), nothing perturbed. Reported per process: medians over
steps of live and heap, and the largest of each, with the process's peak RSS over its steps.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GB = 2 ** 30
FORWARDS = "forwards"  # not a backend: two plain forwards of the step's batch (inference)


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def child(backend: str, steps: int, out: str) -> None:
    """One process: the default run's first `steps` steps with `backend`, one record per step."""
    import psutil
    import torch

    from bench.default_steps import default_steps, run_step

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    cfg, _, loss, eng = default_steps("bench_heap", None if backend == FORWARDS else backend)
    peak = {"live": 0, "heap": 0, "rss": 0}
    stop = threading.Event()
    proc = psutil.Process()

    def sample() -> None:
        while not stop.is_set():
            m = libc.mallinfo2()
            peak["live"] = max(peak["live"], m.uordblks + m.hblkhd)
            peak["heap"] = max(peak["heap"], m.arena)
            peak["rss"] = max(peak["rss"], proc.memory_info().rss)
            time.sleep(0.002)

    threading.Thread(target=sample, daemon=True).start()
    rows = []
    for i in range(steps):
        for k in peak:
            peak[k] = 0
        t0 = time.perf_counter()
        if backend == FORWARDS:  # inference: the step's batch scored twice, nothing perturbed
            loss(i)
            loss(i)
        else:
            run_step(cfg, loss, eng, i)
            eng.flush()  # this step's update inside its record
        dt = time.perf_counter() - t0
        rows.append({"step": i, "step_s": dt, **{f"{k}_bytes": v for k, v in peak.items()}})
        print(f"{backend} step {i}: {dt:.2f} s, live {peak['live'] / GB:.3f} GB, heap {peak['heap'] / GB:.3f} GB, "
              f"RSS {peak['rss'] / GB:.3f} GB", flush=True)
    stop.set()
    with open(out, "w") as f:
        json.dump({"backend": backend if backend == FORWARDS else eng.backend, "threads": torch.get_num_threads(),
                   "torch": torch.__version__, "steps": rows}, f)


def summary(rows: list[dict]) -> dict:
    live = [r["live_bytes"] / GB for r in rows]
    heap = [r["heap_bytes"] / GB for r in rows]
    return {"live_median": statistics.median(live), "live_max": max(live), "heap_median": statistics.median(heap),
            "heap_max": max(heap), "rss_max": max(r["rss_bytes"] for r in rows) / GB,
            "step_s_median": statistics.median(r["step_s"] for r in rows[2:] or rows)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backends", nargs="+", default=["native", "compile"],
                   choices=["native", "compile", "eager", FORWARDS],
                   help=f"kernel backends of the MeZO step, and/or '{FORWARDS}': the default run's loss "
                        "twice per step (inference memory, for comparison)")
    p.add_argument("--repeats", type=int, default=2, help="processes per backend")
    p.add_argument("--steps", type=int, default=30, help="steps per process")
    p.add_argument("--json", default=None, help="also write the records and the table here")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)  # backend, for the process that measures
    p.add_argument("--child_out", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        child(a.child, a.steps, a.child_out)
        return
    if platform.system() != "Linux":
        sys.exit("bench_heap.py: needs Linux (glibc's mallinfo2)")
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench_heap-") as tmp:
        for r in range(a.repeats):
            for backend in (a.backends if r % 2 == 0 else a.backends[::-1]):
                out = os.path.join(tmp, f"{backend}_{r}.json")
                subprocess.run([sys.executable, os.path.abspath(__file__), "--child", backend, "--child_out", out,
                                "--steps", str(a.steps)], check=True)
                with open(out) as f:
                    rec = json.load(f)
                rec["repeat"], rec["summary"] = r, summary(rec["steps"])
                runs.append(rec)
    print(f"\n{platform.processor() or platform.machine()}, {runs[0]['threads']} threads, torch {runs[0]['torch']}; "
          f"{a.steps} steps per process (GB)\n")
    print("| backend | repeat | live, median step | live, largest | heap, median step | heap, largest | peak RSS | "
          "median step (s) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for rec in runs:
        s = rec["summary"]
        print(f"| {rec['backend']} | {rec['repeat']} | {s['live_median']:.3f} | {s['live_max']:.3f} | "
              f"{s['heap_median']:.3f} | {s['heap_max']:.3f} | {s['rss_max']:.3f} | {s['step_s_median']:.3f} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"device": platform.processor() or platform.machine(), "runs": runs}, f, indent=1)


if __name__ == "__main__":
    main()
