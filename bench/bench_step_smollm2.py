"""The figure of record for the step cost: one MeZO step vs two plain loss forwards on the real
default model, with the default run's batches.

SmolLM2-135M-Instruct (the offline package, fp32), the default run's SST-2 training examples and
its batches (BatchStream: batch 16, forwards of --forward_batch_size auto: 4 on CPU since
2026-12-03, 2 before; the step's seed), built through the
default run's own config. In one process, interleaved step by step (machine noise hits every
method alike; every method scores step i's batch in round i), the median over the timed steps:

  2 forwards            the default run's loss twice (its forwards, each padded to its own
                        longest row): the floor for any MeZO step
  2 forwards (padded)   the same, every forward padded to the batch's longest row (the shape the
                        stochastic numerics' forwards have, so that they do not depend on the
                        number of processes)
  stochastic            ZOEngine.step, numerics "stochastic" (the new default): the previous step's
                        update swept over the weights (z evaluation 2, stochastic rounding), then one
                        dual forward of [rows; rows] in which every leaf builds theta +/- eps z (z
                        evaluation 1)
  reference             ZOEngine.step, numerics "reference" (the previous fp32 default: fused
                        in-place sweeps, 3 z evaluations per element), on its own copy of the model
  stochastic (B)        with --also_backend B: the stochastic step with backend B's kernels (the
                        same engine and weights; every backend gives the same bits)

Also: the stochastic step's time split (forward incl. its in-forward perturbation / update
sweep), z evaluations per element per step (counted by the engine), and the kernels alone in
ns per element (one z evaluation each): the dual-forward weights and the update.

    python bench/bench_step_smollm2.py                       # 6 timed steps after 2 warm-up steps
    python bench/bench_step_smollm2.py --steps 10 --json bench/results/step_smollm2.json
    python bench/bench_step_smollm2.py --no_reference --also_backend compile   # native vs compiled kernels
    python bench/bench_step_smollm2.py --device cuda --steps 20   # on a GPU (Triton kernels; forwards of 16)
    python bench/bench_step_smollm2.py --model_name DIR --steps 2 --warmup 1   # another model (smoke tests)
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mezo import config, models, noise, zo  # noqa: E402
from mezo.batches import BatchStream, make_loss_fn  # noqa: E402
from mezo.context import allocator  # noqa: E402
from mezo.schedule import step_seed  # noqa: E402
from mezo.scoring import make_encoder  # noqa: E402
from mezo.splits import build_splits  # noqa: E402
from mezo.tasks import get_task  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def kernel_ns(backend: str, n: int = zo.CHUNK, repeats: int = 5, device=torch.device("cpu")) -> dict:
    """ns per element of one call of each stochastic-numerics kernel on n fp32 elements."""
    k = zo.kernels(backend)
    i32 = lambda v: torch.tensor(v, dtype=torch.int32, device=device)  # noqa: E731
    f32 = lambda v: torch.tensor(v, dtype=torch.float32, device=device)  # noqa: E731
    x = torch.randn(n).to(device)
    keys, ksr = i32(noise.keys(1, "w")), i32(noise.keys(1, "w#sr"))
    calls = {"dual weights (theta +/- eps z)": lambda: k.pm(x, i32(0), keys, f32(1e-3), dist="gaussian", both=True),
             "update (fp32)": lambda: k.update(x, i32(0), keys[None], f32([0.0]), f32(0.0), f32(0.0), ksr,
                                               dist="gaussian", n_update=1, sr=False)}
    out = {}
    for name, fn in calls.items():
        fn()
        ts = []
        for _ in range(repeats):
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            ts.append(time.perf_counter() - t0)
        out[name] = statistics.median(ts) / n * 1e9
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=6, help="timed steps (rounds)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (kernel compilation)")
    p.add_argument("--backend", default="auto", choices=["auto", "native", "compile", "eager", "triton"])
    p.add_argument("--also_backend", default=None, choices=["native", "compile", "eager", "triton"],
                   help="also time the stochastic step with these kernels (method 'stochastic (<backend>)'): the "
                        "same engine and weights, its backend switched for that method's steps (same bits)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="auto: the GPU when there is one (as the training script), else the CPU")
    p.add_argument("--model_name", default=None, help="another model than the default (as accelerate_mezo.py)")
    p.add_argument("--gguf_file", default=None, help="GGUF file inside --model_name's folder")
    p.add_argument("--no_reference", action="store_true", help="skip the reference-numerics engine (saves a model copy)")
    p.add_argument("--json", default=None, help="also write the figures here")
    a = p.parse_args()

    from mezo import distributed as D
    device = D.device() if a.device == "auto" else torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device")
    flags = ["--output_dir", os.path.join("outputs", "bench_step_smollm2"), "--zo_backend", a.backend]
    flags += ["--model_name", a.model_name] if a.model_name else []
    flags += ["--gguf_file", a.gguf_file] if a.gguf_file else []
    cfg = config.parse(flags)
    t, zc = cfg.train, cfg.zo
    task = get_task(cfg.data.task_name, family="causal", text_column=None)
    splits, _ = build_splits(cfg.data, task)
    t0 = time.time()
    model, tok = models.load(cfg.model.name, cfg.model.gguf_file, "fp32", device)
    print(f"model loaded in {time.time() - t0:.1f}s", flush=True)
    torch.set_grad_enabled(False)
    enc = make_encoder(tok, model, cfg.model.max_length)
    stream = BatchStream(len(splits.train), t.batch_size, t.gradient_accumulation_steps, t.seed, t.forward_batch_size)
    plain = make_loss_fn(model, enc, splits.train, stream, "classification")
    padded = make_loss_fn(model, enc, splits.train, stream, "classification", batch_shape=True)
    groups = t.batch_size // t.forward_batch_size
    sto = zo.ZOEngine.from_model(model, dist=zc.dist, backend=zc.backend, numerics="stochastic", row_groups=groups)
    # as the trainer: parity first
    fallback = sto.check_backend() if sto.needs_check else []
    numel = sum(s.local.numel() for s in sto.slots)
    main_backend = sto.backend

    def stochastic(backend):
        def run(i):
            sto.backend = backend
            return sto.step(lambda: padded(i), [step_seed(t.seed, i, 0, 1)], t.learning_rate, zc.eps,
                            t.weight_decay, pair_fn=lambda: padded.pair(i))
        return run

    methods = {
        "2 forwards": lambda i: (plain(i), plain(i)),
        "2 forwards (padded)": lambda i: (padded(i), padded(i)),
        "stochastic": stochastic(main_backend),
    }
    if a.also_backend:
        methods[f"stochastic ({a.also_backend})"] = stochastic(a.also_backend)
    if not a.no_reference:
        ref_model = copy.deepcopy(model)
        ref_plain = make_loss_fn(ref_model, enc, splits.train, stream, "classification")
        ref = zo.ZOEngine.from_model(ref_model, dist=zc.dist, backend=zc.backend, numerics="reference")
        methods["reference"] = lambda i: ref.step(lambda: ref_plain(i), [step_seed(t.seed, i, 0, 1)],
                                                  t.learning_rate, zc.eps, t.weight_decay)
    times = {m: [] for m in methods}
    split = {"forward": [], "sweep": []}
    z_per_step = []
    for i in range(a.warmup + a.steps):
        for m, fn in methods.items():
            z0 = sto.z_elements
            sync(device)
            t0 = time.perf_counter()
            fn(i)
            sync(device)
            dt = time.perf_counter() - t0
            if i >= a.warmup:
                times[m].append(dt)
                if m == "stochastic":
                    split["forward"].append(sto.timing["forward"])
                    split["sweep"].append(sto.timing["sweep"])
                    z_per_step.append((sto.z_elements - z0) / numel)
        print(f"step {i}: " + ", ".join(f"{m} {times[m][-1]:.3f}s" for m in methods if times[m]), flush=True)
    med = {m: statistics.median(v) for m, v in times.items()}
    base = med["2 forwards"]
    ns = kernel_ns(main_backend, device=device)
    also_ns = kernel_ns(a.also_backend, device=device) if a.also_backend else None
    rows = [{"method": m, "median_s": med[m], "ratio": med[m] / base,
             "overhead_ns_per_param": (med[m] - base) / numel * 1e9} for m in methods]
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    alloc = allocator()
    print(f"\n{where}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"backend {main_backend}, allocator {alloc}; {cfg.model.name} fp32 ({numel / 1e6:.1f}M trainable), batch {t.batch_size}, "
          f"forwards of {t.forward_batch_size}; median of {a.steps} interleaved steps after {a.warmup} warm-up\n")
    print("| method | median step (s) | vs 2 forwards | overhead (ns / parameter) |")
    print("|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['method']} | {r['median_s']:.3f} | {r['ratio']:.2f}x | {r['overhead_ns_per_param']:.2f} |")
    f, s = statistics.median(split["forward"]), statistics.median(split["sweep"])
    print(f"\nstochastic step split: time_forward_s {f:.3f} (the dual forward, its perturbation included), "
          f"time_sweep_s {s:.3f} (the update sweep); z evaluations per element per step: "
          f"{statistics.median(z_per_step):.3f}")
    print(f"{main_backend} kernels, one z evaluation each (ns / element, 4M fp32 elements): "
          + ", ".join(f"{k} {v:.2f}" for k, v in ns.items()))
    also_ratio = None
    if also_ns:
        print(f"{a.also_backend} kernels: " + ", ".join(f"{k} {v:.2f}" for k, v in also_ns.items()))
        also_ratio = statistics.median(x / y for x, y in zip(times["stochastic"], times[f"stochastic ({a.also_backend})"]))
        print(f"stochastic ({main_backend}) / stochastic ({a.also_backend}), median of per-step ratios: {also_ratio:.3f}")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"model": cfg.model.name, "numel": numel, "backend": main_backend, "also_backend": a.also_backend,
                       "also_kernel_ns_per_element": also_ns, "main_over_also_step_ratio": also_ratio, "threads": torch.get_num_threads(),
                       "device": where, "allocator": alloc, "parity_fallback": fallback or None, "batch_size": t.batch_size,
                       "forward_batch_size": t.forward_batch_size,
                       "steps": a.steps, "rows": rows, "split_s": {"forward": f, "sweep": s},
                       "z_evaluations_per_step": statistics.median(z_per_step), "kernel_ns_per_element": ns,
                       "times": times}, fh, indent=1)


if __name__ == "__main__":
    main()
