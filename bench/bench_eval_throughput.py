"""Evaluation throughput: our batched candidate scorer vs a reference-style scorer, same model,
same examples, one run.

Ours (mezo.evaluation.evaluate): batches of --batch_size sorted by length, left-padded, all
candidates of a batch in one forward, only the last positions through the LM head
(logits_to_keep), single-token verbalizers scored from one forward of the prompts.
Reference-style (MeZO large_models/run.py forward/one_step_pred): batch 1, one forward per
candidate over prompt + candidate, full logits, log-softmax, mean log-likelihood of the
candidate tokens, argmax.

    OMP_NUM_THREADS=2 python bench/bench_eval_throughput.py --data_dir ../shared/data
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mezo import models  # noqa: E402
from mezo.evaluation import evaluate  # noqa: E402
from mezo.scoring import make_encoder  # noqa: E402
from mezo.tasks import get_task, make_splits  # noqa: E402


@torch.no_grad()
def reference_predict(model, enc, s) -> int:
    prompt, cands = enc(s)
    scores = []
    for c in cands:
        ids = torch.tensor([prompt + c])
        logp = F.log_softmax(model(input_ids=ids).logits.float(), dim=-1)[0, :-1]
        tgt = ids[0, 1:]
        tok = logp.gather(-1, tgt[:, None])[:, 0][-len(c):]
        scores.append(tok.mean().item())
    return max(range(len(scores)), key=scores.__getitem__)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data_dir", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
    ap.add_argument("--tasks", default="SST2:64,Copa:48,RTE:32")
    ap.add_argument("--batch_size", type=int, default=16)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "eval_throughput.json"))
    a = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    t0 = time.time()
    model, tok = models.load(models.DEFAULT_MODEL, None, "fp32", torch.device("cpu"))
    print(f"model loaded in {time.time() - t0:.1f}s", flush=True)
    rows = []
    for spec in a.tasks.split(","):
        name, n = spec.split(":")
        task = get_task(name)
        ev = task.load_split(task.eval_split, a.data_dir)
        test = make_splits(task, [], ev, num_train=0, num_dev=0, num_eval=int(n)).test
        enc = make_encoder(tok, model, 2048)
        for s in test:
            enc(s)  # tokenise up front for both
        evaluate(model, enc, test[:2], a.batch_size)  # warm-up
        t = time.time()
        ours = evaluate(model, enc, test, a.batch_size)
        t_ours = time.time() - t
        t = time.time()
        preds = [reference_predict(model, enc, s) for s in test]
        t_ref = time.time() - t
        ref_acc = sum(p in s.gold_ids for p, s in zip(preds, test)) / len(test)
        ntok = sorted({len(c) for s in test for c in enc(s)[1]})
        row = {"task": name, "examples": len(test), "candidate_tokens": ntok, "ours_s": t_ours, "ref_s": t_ref,
               "ours_ex_per_s": len(test) / t_ours, "ref_ex_per_s": len(test) / t_ref, "speedup": t_ref / t_ours,
               "ours_accuracy": ours["accuracy"], "ref_accuracy": ref_acc}
        rows.append(row)
        print(json.dumps(row), flush=True)
    import transformers
    meta = {"machine": f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
                       f"torch threads {torch.get_num_threads()}",
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "transformers": transformers.__version__},
            "model": f"{models.DEFAULT_MODEL} ({models.OFFLINE_GGUF}, dequantised to fp32)",
            "batch_size": a.batch_size, "command": "OMP_NUM_THREADS=2 python " + " ".join(sys.argv)}
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    json.dump({"meta": meta, "rows": rows}, open(a.out, "w"), indent=1)


if __name__ == "__main__":
    main()
