"""Time and memory of one training step on OPT models: inference, MeZO (ours), MeZO (reference), Adam FT.

Builds OPT-1.3B ... 13B from their published configs with random bf16 weights (no download) and
measures, per model and sequence length, in one run:

  inference   forward + LM loss under inference_mode (what MeZO's memory should match)
  mezo[B]     mezo.zo.ZOEngine step, in-place bf16 (master_weights=False), two forwards,
              sweep backend B (2 fused sweeps per step)
  reference   the MeZO reference implementation's step (princeton-nlp/MeZO, large_models/trainer.py):
              4 sweeps of torch.manual_seed(seed) + one torch.normal per parameter (perturb +1, -2, +1,
              update), same two forwards
  ft          one backprop step with torch.optim.Adam (bf16 weights and states) at --ft_batch_size,
              'OOM' when it does not fit

    python bench/bench_gpu_step.py                       # GPU: 1.3b 2.7b 6.7b 13b, seq 64 and 400
    python bench/bench_gpu_step.py --tiny --repeats 2    # CPU smoke test
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mezo import zo  # noqa: E402
from bench.reference import loss_of, reference_step, zo_loss  # noqa: E402

# published OPT configs (facebook/opt-*): hidden, layers, heads, ffn
OPT = {
    "1.3b": (2048, 24, 32, 8192),
    "2.7b": (2560, 32, 32, 10240),
    "6.7b": (4096, 32, 32, 16384),
    "13b": (5120, 40, 40, 20480),
    "tiny": (64, 2, 4, 256),
}
GIB = 2 ** 30
# MeZO paper (Malladi et al., 2023, App. F, Tables 22-23, A100): left blank on purpose, the exact
# per-model numbers were not verified when this script was written. What the paper states plainly:
# on one A100 80GB, MeZO fine-tunes OPT-30B while Adam FT fits only OPT-2.7B; up to 12x less memory.
PAPER_MEM_GB: dict[str, float] = {}
PAPER_TIME_S: dict[str, float] = {}


def build(size: str, device) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM, OPTConfig
    h, n_layers, heads, ffn = OPT[size]
    cfg = OPTConfig(hidden_size=h, num_hidden_layers=n_layers, num_attention_heads=heads, ffn_dim=ffn,
                    word_embed_proj_dim=h, vocab_size=1024 if size == "tiny" else 50272,
                    max_position_embeddings=2048, dropout=0.0, attention_dropout=0.0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    return model.eval()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(fn, device, repeats: int, warmup: int = 2) -> dict:
    """Mean seconds per call and peak memory (GiB, CUDA only) over warmup + repeats calls."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    try:
        for _ in range(warmup):
            fn()
        sync(device)
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        sync(device)
    except torch.OutOfMemoryError:
        return {"time_s": "OOM", "peak_gib": "OOM"}
    dt = (time.perf_counter() - t0) / repeats
    peak = torch.cuda.max_memory_allocated() / GIB if device.type == "cuda" else None
    return {"time_s": dt, "peak_gib": peak}


def ft_measure(model, ids, device, repeats):
    opt = torch.optim.Adam(model.parameters(), lr=1e-7)

    def step():
        loss_of(model, ids).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    try:
        return measure(step, device, repeats, warmup=1)
    finally:
        opt.zero_grad(set_to_none=True)
        del opt


def bench_size(size, args, device) -> list[dict]:
    model = build(size, device)
    n_params = sum(p.numel() for p in model.parameters())
    vocab = model.config.vocab_size
    rows = []
    print(f"# OPT-{size}: {n_params / 1e9:.3f}B parameters", flush=True)
    for seq in args.seq_lens:
        g = torch.Generator(device="cpu").manual_seed(0)
        ids = torch.randint(4, vocab, (args.batch_size, seq), generator=g).to(device)
        ids_ft = ids[:args.ft_batch_size]
        base = {"size": size, "params": n_params, "seq_len": seq, "device": str(device)}

        def record(method, bs, res, **extra):
            rows.append({**base, "method": method, "batch_size": bs, **res, **extra})
            print(json.dumps(rows[-1]), flush=True)

        record("inference", args.batch_size, measure(lambda: zo_loss(model, ids).item(), device, args.repeats))
        for backend in args.backends:
            if backend == "triton":
                from mezo import noise_triton
                if not noise_triton.available():
                    record(f"mezo[{backend}]", args.batch_size, {"time_s": None, "peak_gib": None},
                           note="triton unavailable")
                    continue
            eng = zo.ZOEngine.from_model(model, dist="gaussian", backend=backend, master_weights=False)
            seeds = iter(range(10 ** 6))

            def mezo_step():
                with torch.no_grad():
                    eng.step(lambda: zo_loss(model, ids).item(), [next(seeds)], lr=1e-7, eps=1e-3, wd=0.0)

            record(f"mezo[{backend}]", args.batch_size, measure(mezo_step, device, args.repeats),
                   resolved_backend=eng.backend, sweeps_per_step=2)
            eng.flush()
        seeds = iter(range(10 ** 6))
        record("reference", args.batch_size,
               measure(lambda: reference_step(model, ids, next(seeds)), device, args.repeats), sweeps_per_step=4)
        if not args.no_ft:
            record("ft_adam", args.ft_batch_size, ft_measure(model, ids_ft, device, args.repeats))
    del model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def fmt(v, unit=""):
    if v is None:
        return "-"
    return v if isinstance(v, str) else f"{v:.3f}{unit}"


def tables(rows, args) -> str:
    methods = list(dict.fromkeys(r["method"] for r in rows))
    sizes = list(dict.fromkeys(r["size"] for r in rows))
    get = {(r["size"], r["seq_len"], r["method"]): r for r in rows}
    out = []
    for key, title, paper in (("peak_gib", "Peak GPU memory, GiB (cf. MeZO paper Table 22)", PAPER_MEM_GB),
                              ("time_s", "Time per step, s (cf. MeZO paper Table 23)", PAPER_TIME_S)):
        for seq in args.seq_lens:
            out.append(f"\n**{title}, seq_len {seq}, batch {args.batch_size} (FT: {args.ft_batch_size})**\n")
            out.append("| model | " + " | ".join(methods) + " | paper (A100) |")
            out.append("|---" * (len(methods) + 2) + "|")
            for s in sizes:
                cells = [fmt(get.get((s, seq, m), {}).get(key)) for m in methods]
                out.append(f"| OPT-{s} | " + " | ".join(cells) + f" | {fmt(paper.get(s))} |")
    out.append("\npaper column: blank where the paper's number was not verified (see the script's header).")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=["1.3b", "2.7b", "6.7b", "13b"], choices=list(OPT))
    ap.add_argument("--seq_lens", nargs="+", type=int, default=[64, 400])
    ap.add_argument("--batch_size", type=int, default=16)
    ap.add_argument("--ft_batch_size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--backends", nargs="+", default=None,
                    help="ZOEngine sweep backends to time (default: compile triton on GPU, eager on CPU)")
    ap.add_argument("--no_ft", action="store_true", help="skip the backprop + Adam step")
    ap.add_argument("--tiny", action="store_true", help="tiny OPT config (CPU smoke test)")
    ap.add_argument("--output", default="bench_gpu_step.json")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.tiny:
        args.sizes = ["tiny"]
    elif device.type != "cuda":
        sys.exit("no CUDA device: use --tiny for a CPU smoke test")
    args.backends = args.backends or (["compile", "triton"] if device.type == "cuda" else ["eager"])
    torch.manual_seed(0)
    rows = []
    for size in args.sizes:
        rows += bench_size(size, args, device)
    meta = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "args": vars(args)}
    with open(args.output, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    print(tables(rows, args))
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
