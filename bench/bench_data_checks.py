"""What checking every row of a split costs: a 400k-row MNLI train split (the size of GLUE
MNLI's, 392,702 rows) read as the run reads it (mezo.tasks.base.read_jsonl + Task.check_rows)
beside the plain read it replaced (`json.loads` per line), interleaved, medians.

    python bench/bench_data_checks.py [--rows 400000] [--reps 5]

The rows are the local MNLI rows (../shared/data/glue/mnli/train.jsonl, else tests/data) repeated
to --rows lines in a temporary file.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
from helpers import SHARED_DATA, TEST_DATA  # noqa: E402

from mezo.tasks import get_task  # noqa: E402


def plain(path: str) -> list[dict]:  # the reader before the checks
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=400_000)
    p.add_argument("--reps", type=int, default=5)
    a = p.parse_args()
    src = os.path.join(SHARED_DATA if os.path.isdir(SHARED_DATA) else TEST_DATA, "glue", "mnli", "train.jsonl")
    lines = [line for line in open(src, encoding="utf-8") if line.strip()]
    task = get_task("MNLI", family="mlm")
    with tempfile.TemporaryDirectory() as d:
        path = task.split_file(d, "train")
        os.makedirs(os.path.dirname(path))
        with open(path, "w", encoding="utf-8") as f:
            for i in range(a.rows):
                f.write(lines[i % len(lines)])
        mb = os.path.getsize(path) / 2**20
        times = {"plain": [], "checked": []}
        for _ in range(a.reps):
            t0 = time.perf_counter()
            plain(path)
            times["plain"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            rows = task.load_split("train", d)
            times["checked"].append(time.perf_counter() - t0)
        assert len(rows) == a.rows
    med = {k: statistics.median(v) for k, v in times.items()}
    print(json.dumps({"rows": a.rows, "mb": round(mb, 1), "plain_s": round(med["plain"], 3),
                      "checked_s": round(med["checked"], 3), "ratio": round(med["checked"] / med["plain"], 3)}))


if __name__ == "__main__":
    main()
