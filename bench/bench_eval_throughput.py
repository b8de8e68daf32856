"""Evaluation throughput: our batched candidate scorer vs a reference-style scorer, same model,
same examples, one run; and the FLOP bound of the speed-up beside the measured ratio.

Ours (mezo.evaluation.evaluate): batches of --batch_size sorted by length, left-padded, all
candidates of a batch in one forward, only the last positions through the LM head
(logits_to_keep), single-token verbalizers scored from one forward of the prompts.
Reference-style (MeZO large_models/run.py forward/one_step_pred): batch 1, one forward per
candidate over prompt + candidate, full logits, log-softmax, mean log-likelihood of the
candidate tokens, argmax.

The bound: matmul FLOPs of the reference-style scorer over those of ours, counted from the
model config and the shapes of the forwards each actually ran (recorded by a forward pre-hook:
rows, padded length, past length, positions kept through the LM head). Per forward of B rows of
T tokens after P cached ones, keeping k positions:
    2 * N_body * B * T                    every linear layer of the blocks (N_body: their weights,
                                          = params minus embeddings and LM head)
  + 4 * B * T * (P + T) * d_attn * layers QK^T and AV over every (query, key) pair, no causal
                                          skipping counted (d_attn = heads * head_dim)
  + 2 * d_model * V * B * k               the LM head
Padding rows count as work (they are run). Wall time is the figure; process CPU time is
recorded beside it because on a shared machine it moves less with other jobs' load. With equal per-FLOP speed on both sides the measured
speed-up would equal the bound; "% of bound" is measured / bound. "padding" is the fraction of
our rows' tokens that are padding.

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


class FlopCounter:
    """Matmul FLOPs of a decoder-only LM's forwards, from its config and the shapes it is run on
    (see the module docstring), with the padding of the rows it saw."""

    def __init__(self, model):
        cfg = model.config
        self.layers = cfg.num_hidden_layers
        self.d = cfg.hidden_size
        heads = cfg.num_attention_heads
        self.d_attn = heads * (getattr(cfg, "head_dim", None) or self.d // heads)
        self.vocab = cfg.vocab_size
        kv = getattr(cfg, "num_key_value_heads", None) or heads
        hd = self.d_attn // heads
        # q, k, v, o and the gated MLP (gate, up, down) of a Llama-style block
        per_layer = self.d * self.d_attn + 2 * self.d * kv * hd + self.d_attn * self.d + 3 * self.d * cfg.intermediate_size
        self.n_body = per_layer * self.layers
        linear = sum(m.weight.numel() for n, m in model.named_modules()
                     if isinstance(m, torch.nn.Linear) and not n.endswith("lm_head"))
        assert linear == self.n_body, (linear, self.n_body)  # the formula is this model's blocks
        self.flops = 0.0
        self.tokens = 0
        self.pad = 0
        self.forwards = 0

    def forward(self, B: int, T: int, past: int, keep: int) -> float:
        return (2 * self.n_body * B * T + 4 * B * T * (past + T) * self.d_attn * self.layers
                + 2 * self.d * self.vocab * B * keep)

    def hook(self, _module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        B, T = ids.shape
        keep = kwargs.get("logits_to_keep", 0) or T     # 0 / absent: every position
        keep = keep if isinstance(keep, int) else len(keep)
        past = kwargs.get("past_key_values")
        past = past.get_seq_length() if past is not None else 0
        mask = kwargs.get("attention_mask")
        real = int(mask[:, -T:].sum()) if mask is not None else B * T
        self.flops += self.forward(B, T, past, keep)
        self.tokens += B * T
        self.pad += B * T - real
        self.forwards += 1
        return None

    def reset(self):
        self.flops, self.tokens, self.pad, self.forwards = 0.0, 0, 0, 0


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
    ap.add_argument("--repeats", type=int, default=1, help="time each scorer this many times, keep the fastest")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "eval_throughput.json"))
    a = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    t0 = time.time()
    model, tok = models.load(models.DEFAULT_MODEL, None, "fp32", torch.device("cpu"))
    print(f"model loaded in {time.time() - t0:.1f}s", flush=True)
    fc = FlopCounter(model)
    model.register_forward_pre_hook(fc.hook, with_kwargs=True)
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
        t_ours, t_ref, c_ours, c_ref = (float("inf"),) * 4
        for _ in range(a.repeats):   # interleaved, so that a change of load hits both
            fc.reset()
            t, c = time.time(), time.process_time()
            ours = evaluate(model, enc, test, a.batch_size)
            t_ours, c_ours = min(t_ours, time.time() - t), min(c_ours, time.process_time() - c)
            f_ours, tok_ours, pad_ours, fw_ours = fc.flops, fc.tokens, fc.pad, fc.forwards
            fc.reset()
            t, c = time.time(), time.process_time()
            preds = [reference_predict(model, enc, s) for s in test]
            t_ref, c_ref = min(t_ref, time.time() - t), min(c_ref, time.process_time() - c)
            f_ref, fw_ref = fc.flops, fc.forwards
        ref_acc = sum(p in s.gold_ids for p, s in zip(preds, test)) / len(test)
        ntok = sorted({len(c) for s in test for c in enc(s)[1]})
        speedup = t_ref / t_ours
        bound = f_ref / f_ours
        row = {"task": name, "examples": len(test), "candidate_tokens": ntok, "ours_s": t_ours, "ref_s": t_ref,
               "ours_ex_per_s": len(test) / t_ours, "ref_ex_per_s": len(test) / t_ref, "speedup": speedup,
               "ours_cpu_s": c_ours, "ref_cpu_s": c_ref, "speedup_cpu_time": c_ref / c_ours,
               "flop_bound": bound, "pct_of_bound": 100 * speedup / bound,
               "ours_gflop": f_ours / 1e9, "ref_gflop": f_ref / 1e9, "ours_forwards": fw_ours, "ref_forwards": fw_ref,
               "ours_tokens": tok_ours, "ours_padding_fraction": pad_ours / tok_ours,
               "ours_gflop_per_s": f_ours / 1e9 / t_ours, "ref_gflop_per_s": f_ref / 1e9 / t_ref,
               "ours_accuracy": ours["accuracy"], "ref_accuracy": ref_acc}
        rows.append(row)
        print(f"{name}: speed-up {speedup:.2f}x (CPU time: {c_ref / c_ours:.2f}x), FLOP bound {bound:.2f}x ({100 * speedup / bound:.0f}% of it), "
              f"padding {100 * pad_ours / tok_ours:.1f}% of our tokens, {f_ours / 1e9 / t_ours:.1f} vs "
              f"{f_ref / 1e9 / t_ref:.1f} GFLOP/s (ours vs reference-style)", flush=True)
        print(json.dumps(row), flush=True)
    import transformers
    meta = {"machine": f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
                       f"torch threads {torch.get_num_threads()}",
            "load_average_at_end": os.getloadavg(),
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "transformers": transformers.__version__},
            "model": f"{models.DEFAULT_MODEL} ({models.OFFLINE_GGUF}, dequantised to fp32)",
            "flop_model": "2*N_body per token + 4*T*(P+T)*d_attn*layers per row + 2*d_model*V per kept position",
            "batch_size": a.batch_size, "repeats": a.repeats,
            "command": "OMP_NUM_THREADS=2 python " + " ".join(sys.argv)}
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    json.dump({"meta": meta, "rows": rows}, open(a.out, "w"), indent=1)


if __name__ == "__main__":
    main()
