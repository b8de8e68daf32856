"""SmolLM2-135M-Instruct zero-shot vs 32-shot in-context learning (ICL), reference formatting.

Zero-shot: the test prompts as they are. ICL: each test prompt gets --num_demos gold
demonstrations from the task's train split (one demo set per test example with the reference's
seeds, mezo.splits.icl_samples), the whole cut from the left to --max_length tokens keeping the
first token (the reference's truncation; --max_length 2048 is the reference default).
Test examples: the reference's sampling of the validation split (seed 0), the first N.
BoolQ: the local copy has no train split, so demos come from validation rows outside the test
set (a deviation from the reference, which draws them from train).

    OMP_NUM_THREADS=2 python bench/bench_icl_smollm2.py --data_dir ../shared/data
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mezo import models  # noqa: E402
from mezo.evaluation import evaluate  # noqa: E402
from mezo.scoring import make_encoder  # noqa: E402
from mezo.splits import icl_samples  # noqa: E402
from mezo.tasks import get_task, make_splits  # noqa: E402
from mezo.tasks.base import permutation_subset  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data_dir", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
    ap.add_argument("--tasks", default="SST2:100,Copa:100,RTE:30,BoolQ:20,SQuAD:20")
    ap.add_argument("--num_demos", type=int, default=32)
    ap.add_argument("--max_length", type=int, default=2048)
    ap.add_argument("--batch_size", type=int, default=8)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "icl_smollm2.json"))
    a = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    torch.set_grad_enabled(False)
    model, tok = models.load(models.DEFAULT_MODEL, None, "fp32", torch.device("cpu"))
    enc = make_encoder(tok, model, a.max_length)
    import transformers
    result = {"meta": {"machine": f"{os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}",
                       "versions": {"python": platform.python_version(), "torch": torch.__version__,
                                    "transformers": transformers.__version__},
                       "model": f"{models.DEFAULT_MODEL} ({models.OFFLINE_GGUF}, dequantised to fp32)",
                       "num_demos": a.num_demos, "max_length": enc.max_length,
                       "command": "OMP_NUM_THREADS=2 python " + " ".join(sys.argv)}, "rows": []}
    for spec in a.tasks.split(","):
        name, n = spec.split(":")
        task = get_task(name)
        ev = task.load_split(task.eval_split, a.data_dir)
        if os.path.exists(task.split_file(a.data_dir, task.train_split)):
            train_rows, demo_source = task.load_split(task.train_split, a.data_dir), "train"
        else:  # BoolQ locally: demos from validation rows not in the test sample
            test_idx = set(permutation_subset(len(ev), 0, int(n)))
            train_rows, demo_source = [r for i, r in enumerate(ev) if i not in test_idx], "validation (outside test)"
        test = make_splits(task, [], ev, num_train=0, num_dev=0, num_eval=int(n)).test
        row = {"task": name, "examples": len(test), "metric": task.metric, "demo_source": demo_source}
        t = time.time()
        row["zero_shot"] = evaluate(model, enc, test, a.batch_size)
        row["zero_shot_s"] = time.time() - t
        icl = icl_samples(task, train_rows, test, a.num_demos)
        lens = [len(enc(s)[0]) for s in icl]
        row["icl_prompt_tokens"] = [min(lens), max(lens)]
        t = time.time()
        row["icl"] = evaluate(model, enc, icl, a.batch_size)
        row["icl_s"] = time.time() - t
        result["rows"].append(row)
        print(json.dumps(row), flush=True)
        os.makedirs(os.path.dirname(a.out), exist_ok=True)
        json.dump(result, open(a.out, "w"), indent=1)


if __name__ == "__main__":
    main()
