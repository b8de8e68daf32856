"""Time and memory of one training step on OPT models: inference, MeZO (ours), MeZO (reference), Adam FT.

Builds OPT-1.3B ... 13B from their published configs with random bf16 weights (no download) and
measures, per model and sequence length, in one run (batch --batch_size, random token ids, the LM
loss at every position):

  inference        one forward + LM loss under inference_mode (what MeZO's memory should match)
  mezo_stochastic  ours, the default numerics: mezo.zo.ZOEngine.from_model(model, numerics="stochastic")
                   .step(..., pair_fn=...): the previous step's update swept over the weights (z
                   evaluation 2, rounded stochastically in bf16), then ONE dual forward of [batch; batch]
                   in which every leaf builds theta +/- eps z (z evaluation 1); the loss of each half
                   as Hugging Face's causal LM loss (what mezo/zo_trainer.py drives with
                   mezo.batches.make_loss_fn(..., batch_shape=True) and its loss_fn.pair)
  mezo_inplace     ours, numerics "reference": the bf16 weights perturbed, restored and updated in
                   place (2 fused sweeps, 3 z evaluations per element), two forwards
  reference        the MeZO reference implementation's step (princeton-nlp/MeZO, large_models/trainer.py;
                   bench/reference.py): 4 sweeps of torch.manual_seed(seed) + one torch.normal per
                   parameter (perturb +1, -2, +1, update), the same two forwards
  ft_adam          one backprop step with torch.optim.Adam (bf16 weights and states) at --ft_batch_size,
                   'OOM' when it does not fit

and, for the layout of the paper's Table 22 (memory at per-device batch 1 on MultiRC, ~400 tokens),
the peak memory of inference, mezo_stochastic and ft_adam at batch --mem_batch_size and the longest
sequence length. Beside ours it prints the paper's figures (Malladi et al., 2023, App. F, A100 80GB)
read from mezo/experiments/paper_memory.csv (Table 22) and paper_wallclock.csv (Table 23).

Times: the median of --repeats calls after warm-up, each call synchronised (CUDA). Memory:
torch.cuda.max_memory_allocated (weights included) and max_memory_reserved; the paper read
nvidia-smi, which adds the CUDA context (~0.5 GiB) to the reserved figure.

    python bench/bench_gpu_step.py                       # GPU: 1.3b 2.7b 6.7b 13b, seq 64 and 400
    python bench/bench_gpu_step.py --tiny --repeats 2    # CPU smoke test (tiny OPT config)
"""
from __future__ import annotations

import argparse
import csv
import gc
import json
import os
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from mezo import zo  # noqa: E402
from bench.reference import loss_of, pair_loss, reference_step, zo_loss  # noqa: E402

# published OPT configs (facebook/opt-*): hidden, layers, heads, ffn
OPT = {
    "1.3b": (2048, 24, 32, 8192),
    "2.7b": (2560, 32, 32, 10240),
    "6.7b": (4096, 32, 32, 16384),
    "13b": (5120, 40, 40, 20480),
    "tiny": (64, 2, 4, 256),
}
GIB = 2 ** 30
EXPERIMENTS = os.path.join(ROOT, "mezo", "experiments")


def paper_numbers() -> tuple[dict, dict]:
    """The MeZO paper's Table 22 (memory, GB, and GPUs, per model and method) and Table 23 (seconds
    per step, per model and method at a batch size), from the CSV files the analysis reads:
    PAPER_MEM_GB["13b"]["Full-parameter FT"] = (316.0, 4); PAPER_TIME_S["13b"]["MeZO bsz 16"] = (2.702, 1)."""
    mem: dict[str, dict] = {}
    with open(os.path.join(EXPERIMENTS, "paper_memory.csv"), newline="") as f:
        for r in csv.DictReader(f):
            if r["memory_gb"]:
                mem.setdefault(r["model_size"].lower(), {})[r["method"]] = (float(r["memory_gb"]), int(r["gpus"]))
    tim: dict[str, dict] = {}
    with open(os.path.join(EXPERIMENTS, "paper_wallclock.csv"), newline="") as f:
        for r in csv.DictReader(f):
            tim.setdefault(r["model_size"].lower(), {})[f"{r['method']} bsz {r['batch_size']}"] = \
                (float(r["step_time_s"]), int(r["gpus"]))
    return mem, tim


PAPER_MEM_GB, PAPER_TIME_S = paper_numbers()


def build(size: str, device) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM, OPTConfig
    h, n_layers, heads, ffn = OPT[size]
    cfg = OPTConfig(hidden_size=h, num_hidden_layers=n_layers, num_attention_heads=heads, ffn_dim=ffn,
                    word_embed_proj_dim=h, vocab_size=1024 if size == "tiny" else 50272,
                    max_position_embeddings=2048, dropout=0.0, attention_dropout=0.0)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    return model.eval()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def free(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measure(fn, device, repeats: int, warmup: int = 1) -> dict:
    """Median / mean seconds per call over `repeats` calls after `warmup`, each call synchronised,
    and the peak memory (GiB, CUDA only) over all of them; 'OOM' when it ran out of memory."""
    free(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    try:
        for i in range(warmup + repeats):
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    except torch.OutOfMemoryError:
        free(device)
        return {"time_s": "OOM", "peak_gib": "OOM", "reserved_gib": "OOM"}
    cuda = device.type == "cuda"
    return {"time_s": statistics.median(times), "mean_s": statistics.fmean(times), "times_s": times,
            "peak_gib": torch.cuda.max_memory_allocated() / GIB if cuda else None,
            "reserved_gib": torch.cuda.max_memory_reserved() / GIB if cuda else None}


def ft_measure(model, ids, device, repeats, warmup=1):
    opt = torch.optim.Adam(model.parameters(), lr=1e-7)

    def step():
        loss_of(model, ids).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    try:
        return measure(step, device, repeats, warmup=warmup)
    finally:
        opt.zero_grad(set_to_none=True)
        del opt
        free(device)


class Budget:
    """Wall-clock deadline: what is not started in time is recorded as skipped, not run."""

    def __init__(self, seconds: float | None):
        self.end = time.monotonic() + seconds if seconds else None

    def left(self) -> float:
        return float("inf") if self.end is None else self.end - time.monotonic()


def bench_size(size, args, device, budget: Budget, sink=lambda rows: None) -> list[dict]:
    """The rows of one model size; sink(rows so far) after each (the caller saves them)."""
    t0 = time.perf_counter()
    model = build(size, device)
    n_params = sum(p.numel() for p in model.parameters())
    vocab = model.config.vocab_size
    rows = []
    print(f"# OPT-{size}: {n_params / 1e9:.3f}B parameters, built in {time.perf_counter() - t0:.1f}s", flush=True)
    seeds = iter(range(1, 10 ** 9))

    def record(base, method, bs, res, **extra):
        rows.append({**base, "method": method, "batch_size": bs, **res, **extra})
        sink(rows)
        shown = {k: v for k, v in rows[-1].items() if k != "times_s"}
        print(json.dumps(shown), flush=True)

    def run(base, method, bs, fn, **extra):
        if budget.left() <= 0:
            record(base, method, bs, {"time_s": None, "peak_gib": None}, note="skipped: time budget spent")
            return
        try:
            res = fn()
        except Exception as e:  # noqa: BLE001 - one failed measurement does not end the others
            free(device)
            res = {"time_s": None, "peak_gib": None, "error": f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"}
        record(base, method, bs, res, **extra)

    def engines(ids, base, bs):
        for backend in args.backends:
            for numerics in args.numerics:
                name = f"mezo_{'stochastic' if numerics == 'stochastic' else 'inplace'}[{backend}]"
                try:
                    eng = zo.ZOEngine.from_model(model, dist="gaussian", backend=backend, numerics=numerics)
                except ValueError as e:  # e.g. --zo_backend triton without CUDA
                    record(base, name, bs, {"time_s": None, "peak_gib": None}, note=str(e))
                    continue
                failures = eng.check_backend() if eng.needs_check else []

                def step(eng=eng):
                    eng.step(lambda: zo_loss(model, ids).item(), [next(seeds)], 1e-7, 1e-3, 0.0,
                             pair_fn=lambda: pair_loss(model, ids))

                run(base, name, bs, lambda: measure(step, device, args.repeats, args.warmup), numerics=numerics,
                    resolved_backend=eng.backend, parity_fallback=failures or None,
                    z_evaluations=2 if numerics == "stochastic" else 3)
                eng.flush()  # theta again: the next method starts from the same weights
                del eng

    for seq in args.seq_lens:
        g = torch.Generator(device="cpu").manual_seed(0)
        ids = torch.randint(4, vocab, (args.batch_size, seq), generator=g).to(device)
        base = {"size": size, "params": n_params, "seq_len": seq, "device": str(device)}
        run(base, "inference", args.batch_size, lambda: measure(lambda: zo_loss(model, ids).item(), device,
                                                                 args.repeats, args.warmup))
        engines(ids, base, args.batch_size)
        if not args.no_reference:
            run(base, "reference", args.batch_size,
                lambda: measure(lambda: reference_step(model, ids, next(seeds)), device, args.repeats, args.warmup),
                z_evaluations=4)
        if not args.no_ft:
            run(base, "ft_adam", args.ft_batch_size,
                lambda: ft_measure(model, ids[:args.ft_batch_size], device, args.repeats, args.warmup))
    if args.mem_batch_size:  # Table 22's setting: per-device batch 1, the longest sequence
        seq = max(args.seq_lens)
        ids = torch.randint(4, vocab, (args.mem_batch_size, seq), generator=torch.Generator().manual_seed(1)).to(device)
        base = {"size": size, "params": n_params, "seq_len": seq, "device": str(device), "memory_only": True}
        run(base, "inference", args.mem_batch_size, lambda: measure(lambda: zo_loss(model, ids).item(), device, 1, 1))
        eng = zo.ZOEngine.from_model(model, dist="gaussian", backend=args.backends[0], numerics="stochastic")
        run(base, f"mezo_stochastic[{args.backends[0]}]", args.mem_batch_size, lambda: measure(
            lambda: eng.step(lambda: zo_loss(model, ids).item(), [next(seeds)], 1e-7, 1e-3, 0.0,
                             pair_fn=lambda: pair_loss(model, ids)), device, 1, 1), numerics="stochastic")
        eng.flush()
        del eng
        if not args.no_ft:
            run(base, "ft_adam", args.mem_batch_size, lambda: ft_measure(model, ids, device, 1, 1))
    del model
    free(device)
    return rows


# ---------------------------------------------------------------------------- tables
def fmt(v, digits=3):
    if v is None:
        return "-"
    return v if isinstance(v, str) else f"{v:.{digits}f}"


def paper_cell(d: dict, key: str, digits: int) -> str:
    if key not in d:
        return "-"
    v, gpus = d[key]
    return f"{v:.{digits}f}" + (f" ({gpus} GPUs)" if gpus > 1 else "")


def tables(rows, meta: dict) -> str:
    """Markdown, laid out like the paper's Tables 23 (time per step) and 22 (memory), ours beside
    the paper's figures (A100 80GB, MultiRC ~400 tokens; sizes the paper did not measure: '-')."""
    a = meta["args"]
    timed = [r for r in rows if not r.get("memory_only")]
    mem = [r for r in rows if r.get("memory_only")]
    sizes = list(dict.fromkeys(r["size"] for r in rows))
    ours = [m for m in dict.fromkeys(r["method"] for r in timed) if m != "inference"]
    get = {(r["size"], r["seq_len"], r["method"]): r for r in timed}
    out = [f"GPU: {meta['device']}; torch {meta['torch']}; random bf16 weights; batch {a['batch_size']} "
           f"(FT: {a['ft_batch_size']}); median of {a['repeats']} steps after {a.get('warmup', 1)} warm-up.\n"]
    for seq in a["seq_lens"]:
        out.append(f"\n**Time per step, s (cf. MeZO paper Table 23: MultiRC, ~400 tokens, A100 80GB), "
                   f"seq_len {seq}**\n")
        out.append("| model | inference | " + " | ".join(ours) + " | ours / 2 inference | paper MeZO bsz 16 | "
                   "paper MeZO bsz 8 | paper FT bsz 8 |")
        out.append("|---" + "|---:" * (len(ours) + 5) + "|")
        for s in sizes:
            inf = get.get((s, seq, "inference"), {}).get("time_s")
            cells = [fmt(get.get((s, seq, m), {}).get("time_s")) for m in ours]
            mine = next((get[(s, seq, m)]["time_s"] for m in ours if m.startswith("mezo_stochastic")
                         and (s, seq, m) in get), None)
            ratio = f"{mine / (2 * inf):.2f}x" if isinstance(mine, float) and isinstance(inf, float) else "-"
            p = PAPER_TIME_S.get(s, {})
            out.append(f"| OPT-{s} | {fmt(inf)} | " + " | ".join(cells) + f" | {ratio} | "
                       f"{paper_cell(p, 'MeZO bsz 16', 3)} | {paper_cell(p, 'MeZO bsz 8', 3)} | "
                       f"{paper_cell(p, 'FT bsz 8', 3)} |")
        out.append(f"\n**Peak GPU memory, GiB (torch max allocated), seq_len {seq}, batch {a['batch_size']} "
                   f"(FT: {a['ft_batch_size']})**\n")
        out.append("| model | inference | " + " | ".join(ours) + " |")
        out.append("|---" + "|---:" * (len(ours) + 1) + "|")
        for s in sizes:
            cells = [fmt(get.get((s, seq, m), {}).get("peak_gib"), 2) for m in ["inference", *ours]]
            out.append(f"| OPT-{s} | " + " | ".join(cells) + " |")
    if mem:
        mget = {(r["size"], r["method"].split("[")[0]): r for r in mem}
        b, seq = mem[0]["batch_size"], mem[0]["seq_len"]
        out.append(f"\n**Peak GPU memory, GiB, batch {b}, seq_len {seq} (cf. MeZO paper Table 22: per-device "
                   f"batch 1, MultiRC ~400 tokens, nvidia-smi, GB)**\n")
        out.append("| model | inference (allocated / reserved) | mezo_stochastic (allocated / reserved) | "
                   "ft_adam (allocated / reserved) | paper zero-shot / MeZO | paper ICL | paper prefix FT | "
                   "paper full FT |")
        out.append("|---" + "|---:" * 7 + "|")
        for s in sizes:
            cells = []
            for m in ("inference", "mezo_stochastic", "ft_adam"):
                r = mget.get((s, m), {})
                cells.append(f"{fmt(r.get('peak_gib'), 2)} / {fmt(r.get('reserved_gib'), 2)}")
            p = PAPER_MEM_GB.get(s, {})
            out.append(f"| OPT-{s} | " + " | ".join(cells) + " | " + " | ".join(
                paper_cell(p, k, 0) for k in ("Zero-shot / MeZO", "ICL", "Prefix FT", "Full-parameter FT")) + " |")
    out.append("\npaper columns: Malladi et al. (2023), App. F, Tables 22-23 (mezo/experiments/paper_memory.csv, "
               "paper_wallclock.csv); '(N GPUs)' where the paper needed more than one; '-' where it has no figure "
               "(6.7B in Table 23). Ours: one GPU, random weights, synthetic token ids.")
    return "\n".join(out)


def environment(device) -> dict:
    import platform
    meta = {"device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({platform.machine()})",
            "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version()}
    from importlib import metadata
    for name in ("transformers", "triton", "peft"):
        try:
            meta[name] = metadata.version(name)  # without importing it (peft takes seconds)
        except metadata.PackageNotFoundError:
            meta[name] = None
    return meta


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=["1.3b", "2.7b", "6.7b", "13b"], choices=list(OPT))
    ap.add_argument("--seq_lens", nargs="+", type=int, default=[64, 400])
    ap.add_argument("--batch_size", type=int, default=16)
    ap.add_argument("--ft_batch_size", type=int, default=8, help="Adam FT batch (the paper's Table 23 FT: 8)")
    ap.add_argument("--mem_batch_size", type=int, default=1,
                    help="batch of the Table 22 memory rows at the longest seq_len (0: none)")
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per measurement (the median is reported)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed calls first (Triton compilation, allocator)")
    ap.add_argument("--backends", nargs="+", default=None, choices=["triton", "compile", "eager", "auto"],
                    help="ZOEngine kernel backends to time (default: triton on GPU, eager on CPU)")
    ap.add_argument("--numerics", nargs="+", default=["stochastic", "reference"], choices=["stochastic", "reference"],
                    help="our engine's numerics to time (mezo_stochastic, mezo_inplace)")
    ap.add_argument("--no_reference", action="store_true", help="skip the reference implementation's step")
    ap.add_argument("--no_ft", action="store_true", help="skip the backprop + Adam step")
    ap.add_argument("--budget_s", type=float, default=None,
                    help="wall-clock budget: measurements not started within it are recorded as skipped")
    ap.add_argument("--tiny", action="store_true", help="tiny OPT config (CPU smoke test)")
    ap.add_argument("--output", default="bench_gpu_step.json", help="rows + environment as JSON")
    ap.add_argument("--markdown", default=None, help="also write the tables here")
    args = ap.parse_args(argv)
    budget = Budget(args.budget_s)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.tiny:
        args.sizes, args.seq_lens = ["tiny"], [s for s in args.seq_lens if s <= 64] or [16]
    elif device.type != "cuda":
        sys.exit("no CUDA device: use --tiny for a CPU smoke test")
    args.backends = args.backends or (["triton"] if device.type == "cuda" else ["eager"])
    rows = []
    meta = {**environment(device), "args": vars(args), "command": " ".join([os.path.basename(sys.executable),
                                                                            *sys.argv])}

    def write():  # after every row: a run killed at its time limit keeps what it measured
        md = tables([r for r in rows if r.get("method") != "all"], meta)
        with open(args.output, "w") as f:
            json.dump({"meta": meta, "paper_memory_gb": PAPER_MEM_GB, "paper_time_s": PAPER_TIME_S, "rows": rows},
                      f, indent=1)
        if args.markdown:
            with open(args.markdown, "w") as f:
                f.write(md + "\n")
        return md

    for size in args.sizes:
        if budget.left() <= 0:
            print(f"# OPT-{size}: skipped (time budget spent)", flush=True)
            rows.append({"size": size, "method": "all", "note": "skipped: time budget spent"})
            continue
        before = list(rows)

        def sink(new, before=before):
            rows[:] = before + new
            write()

        rows[:] = before + bench_size(size, args, device, budget, sink)
    md = write()
    print(md)
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
