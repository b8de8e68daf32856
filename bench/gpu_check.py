"""The GPU check behind bench/gpu_check.sh (its header says how to run it; this file holds the work).

Parts (--parts, default all), each recorded in summary.json / summary.md as it finishes:
  1  kernel parity (mezo.zo.parity_check: each Triton kernel against the eager PyTorch path, for
     every numerics and z generator and both distributions: Rademacher and the stochastic-rounding
     bits bit for bit, Gaussian within 1e-6) and the 1-process FSDP2 path (torchrun, nccl on a GPU)
     on a tiny model built from a config: completed training_metrics.json, the kernel backend kept
  2  the default run (SmolLM2-135M-Instruct, bundled SST-2 sample, 300 steps): wall time, accuracy
     curve, step times; then bench/bench_step_smollm2.py (the step against two plain forwards)
  3  bench/bench_gpu_step.py: OPT-1.3B ... 13B, inference / ours / reference / Adam FT, time and memory
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
PIECES_DIR = os.path.join(ROOT, ".gpucheck")
STASH = os.environ.get("MEZO_GPUCHECK_STASH", "/tmp/mezo_gpucheck")
DEFAULT_STEPS = 300
OUT_FILES = ("summary.json", "summary.md", "gpu_check.log", "bench_gpu_step.json", "step_smollm2.json",
             "default_run_metrics.json")  # at most 8 files come back from a device call


# ---------------------------------------------------------------------------- helpers
class Log:
    """Lines to stdout and to gpu_check.log."""

    def __init__(self, path: str):
        self.f = open(path, "w", buffering=1)

    def __call__(self, msg: str = ""):
        print(msg, flush=True)
        self.f.write(msg + "\n")


def run_logged(log: Log, cmd: list[str], timeout: float, env=None, cwd=ROOT) -> tuple[int, float, list[str]]:
    """(exit code, seconds, output lines) of cmd, its output streamed to the log; on timeout its
    whole process group is killed and the code is 124."""
    log(f"$ {' '.join(cmd)}")
    t0 = time.time()
    p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         bufsize=1, start_new_session=True)
    lines = []
    deadline = t0 + max(timeout, 1)
    import selectors
    sel = selectors.DefaultSelector()
    sel.register(p.stdout, selectors.EVENT_READ)
    code = None
    while True:
        left = deadline - time.time()
        if left <= 0:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            log(f"(killed after {timeout:.0f}s: the time budget)")
            code = 124
            break
        if sel.select(timeout=min(left, 1.0)):
            line = p.stdout.readline()
            if line == "":
                code = p.wait()
                break
            line = line.rstrip("\n")
            lines.append(line)
            log("  " + line)
        elif p.poll() is not None:
            rest = p.stdout.read()
            for line in rest.splitlines():
                lines.append(line)
                log("  " + line)
            code = p.returncode
            break
    sel.close()
    return code, time.time() - t0, lines


def child_env(extra_path: list[str] | None = None, **kw) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONUNBUFFERED": "1", **kw}
    env["PYTHONPATH"] = os.pathsep.join([*(extra_path or []), ROOT, *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


def read_json(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def versions() -> dict:
    from importlib import metadata
    out = {"python": platform.python_version()}
    for name in ("torch", "triton", "transformers", "peft", "accelerate", "tokenizers", "safetensors", "gguf",
                 "numpy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def environment(args) -> dict:
    import torch
    env = {"date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "host": platform.node(), "cpus": os.cpu_count(), "machine": platform.machine(), **versions(),
           "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
        env["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2 ** 30, 1)
        env["capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
        try:
            v = torch.cuda.nccl.version()
            env["nccl"] = ".".join(map(str, v)) if isinstance(v, tuple) else str(v)
        except Exception:  # noqa: BLE001 - no NCCL in this build
            env["nccl"] = None
    try:
        q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=30)
        env["nvidia_smi"] = q.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        env["nvidia_smi"] = None
    try:
        env["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                           timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        env["git_commit"] = None
    env["code_sha256"] = code_fingerprint()
    return env


def code_fingerprint() -> str:
    """sha256 over the project's Python sources (path and bytes, sorted): names the code when the
    device copy of the tree has no .git. `python bench/gpu_check.py --fingerprint` prints it here."""
    h = hashlib.sha256()
    files = []
    for top in ("mezo", "bench"):
        for d, _, names in os.walk(os.path.join(ROOT, top)):
            files += [os.path.join(d, n) for n in names if n.endswith(".py")]
    files.append(os.path.join(ROOT, "accelerate_mezo.py"))
    for path in sorted(files):
        h.update(os.path.relpath(path, ROOT).encode() + b"\0")
        with open(path, "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------- the default model's pieces
def stash_pieces(log: Log, stash: str = STASH, sources: str = PIECES_DIR) -> None:
    """Copy the GGUF pieces, manifests and wheels that travelled with this call (.gpucheck/*/) to
    the stash, which outlives the call while the machine stays warm."""
    if not os.path.isdir(sources):
        return
    joined = read_json(os.path.join(stash, "pieces", "manifest.json"))
    if joined and os.path.isfile(os.path.join(stash, "site", joined["package"], joined["file"])):
        joined = {p["name"] for p in joined["pieces"]}  # the whole file is there: its pieces are not needed
    else:
        joined = set()
    for sub in sorted(os.listdir(sources)):
        folder = os.path.join(sources, sub)
        if not os.path.isdir(folder):
            continue
        for name in sorted(os.listdir(folder)):
            src = os.path.join(folder, name)
            if name in joined:
                continue
            kind = "wheels" if name.endswith(".whl") else "pieces"
            dst = os.path.join(stash, kind, name)
            if os.path.isfile(src) and not (os.path.exists(dst) and os.path.getsize(dst) == os.path.getsize(src)):
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                shutil.copyfile(src, dst + ".tmp")
                os.replace(dst + ".tmp", dst)
                log(f"stashed {os.path.relpath(src, ROOT)} -> {dst}")


def assemble(stash: str = STASH) -> tuple[str | None, str]:
    """(site folder holding the package with the joined GGUF file, what happened) once every piece
    the manifest names is in the stash with its sha256; (None, why not) otherwise."""
    from bench.export_default_model import sha256
    manifest = read_json(os.path.join(stash, "pieces", "manifest.json"))
    if manifest is None:
        return None, "no GGUF pieces travelled (python bench/export_default_model.py pieces; see gpu_check.sh)"
    site = os.path.join(stash, "site")
    pkg = os.path.join(site, manifest["package"])
    target = os.path.join(pkg, manifest["file"])
    if os.path.isfile(target) and os.path.getsize(target) == manifest["size"]:
        return site, f"{target} (joined earlier)"
    missing = [p["name"] for p in manifest["pieces"] if not os.path.isfile(os.path.join(stash, "pieces", p["name"]))]
    if missing:
        have = len(manifest["pieces"]) - len(missing)
        return None, (f"{have} of {len(manifest['pieces'])} GGUF pieces here; missing {', '.join(missing)} "
                      f"(carry its .gpucheck folder in a call right after this one)")
    for p in manifest["pieces"]:
        got = sha256(os.path.join(stash, "pieces", p["name"]))
        if got != p["sha256"]:
            return None, f"GGUF piece {p['name']}: sha256 {got[:12]}... is not the manifest's {p['sha256'][:12]}..."
    os.makedirs(pkg, exist_ok=True)
    with open(target + ".tmp", "wb") as out:
        for p in manifest["pieces"]:
            with open(os.path.join(stash, "pieces", p["name"]), "rb") as f:
                shutil.copyfileobj(f, out, 1 << 20)
    if sha256(target + ".tmp") != manifest["sha256"]:
        os.remove(target + ".tmp")
        return None, "the joined GGUF file's sha256 is not the manifest's"
    os.replace(target + ".tmp", target)
    open(os.path.join(pkg, "__init__.py"), "a").close()  # find_spec needs a package; nothing runs
    for p in manifest["pieces"]:  # the whole file is there now
        os.remove(os.path.join(stash, "pieces", p["name"]))
    return site, f"{target} ({manifest['size']} bytes, sha256 checked)"


def install_wheels(log: Log, site: str, stash: str = STASH) -> None:
    """pip install the stashed wheels into `site` when their package is not importable already."""
    wheels = sorted(os.path.join(stash, "wheels", w) for w in os.listdir(os.path.join(stash, "wheels"))) \
        if os.path.isdir(os.path.join(stash, "wheels")) else []
    todo = []
    for w in wheels:
        name = os.path.basename(w).split("-")[0]
        probe = subprocess.run([sys.executable, "-c", f"import {name}"], env=child_env([site]), capture_output=True)
        if probe.returncode:
            todo.append(w)
    if todo:
        run_logged(log, [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                         "--no-cache-dir", "--target", site, *todo], 120)


def pieces_selftest(work: str) -> str:
    """bench/export_default_model.split, stash_pieces and assemble on a small random file: "ok" or
    what went wrong."""
    from bench.export_default_model import split
    root = os.path.join(work, "pieces_selftest")
    shutil.rmtree(root, ignore_errors=True)
    src = os.path.join(root, "model.gguf")
    os.makedirs(root)
    data = os.urandom(300_001)
    with open(src, "wb") as f:
        f.write(data)
    folders = split(src, os.path.join(root, "travel"), 2, "fake_pkg")
    stash, quiet = os.path.join(root, "stash"), (lambda msg="": None)
    half = os.path.join(root, "only_a")  # call 1: the first piece alone
    shutil.copytree(folders[0], os.path.join(half, "a"))
    stash_pieces(quiet, stash, half)
    site, why = assemble(stash)
    if site is not None:
        return f"joined with a piece missing: {why}"
    stash_pieces(quiet, stash, os.path.join(root, "travel"))  # call 2: the second piece arrives
    site, why = assemble(stash)
    if site is None:
        return f"not joined: {why}"
    with open(os.path.join(site, "fake_pkg", "model.gguf"), "rb") as f:
        return "ok" if f.read() == data else "joined file differs from the original"


# ---------------------------------------------------------------------------- part 1
def parity_main(out_path: str, backends: list[str]) -> int:
    """(subprocess) mezo.zo.parity_check for each backend x generator x distribution x numerics,
    recording the largest difference of every compared output; JSON to out_path."""
    import torch
    from mezo import noise, zo
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    for backend in backends:
        for gen in noise.GENERATORS:
            for dist in noise.DISTRIBUTIONS:
                for numerics in zo.NUMERICS:
                    diffs = []

                    def compare(d, got, want, diffs=diffs):
                        ok = zo.agree(d, got, want)
                        diffs.append({"dist": d, "max_abs_diff": (got.float().cpu() - want.float().cpu()).abs()
                                      .max().item(), "agree": ok, "bit_exact": torch.equal(got.cpu(), want.cpu())})
                        return ok

                    t0 = time.time()
                    why = zo.parity_check(backend, dev, dist, numerics, compare=compare, generator=gen)
                    rows.append({"backend": backend, "generator": gen, "dist": dist, "numerics": numerics,
                                 "ok": why is None, "reason": why, "compared": diffs, "seconds": time.time() - t0,
                                 "device": str(dev)})
                    print(f"{backend:7s} {gen:18s} {dist:10s} {numerics:10s} "
                          f"{'ok' if why is None else 'FAIL: ' + why} "
                          f"(max |diff| {max((c['max_abs_diff'] for c in diffs), default=float('nan')):.3g})",
                          flush=True)
    with open(out_path, "w") as f:
        json.dump(rows, f, indent=1)
    return 0 if all(r["ok"] for r in rows) else 1


def part1(ctx) -> dict:
    args, log, res = ctx.args, ctx.log, {}
    import torch
    cuda = torch.cuda.is_available()
    # kernel parity
    if cuda:
        backends, env = args.parity_backends, child_env()
    elif args.tiny:
        backends, env = ["triton"], child_env(TRITON_INTERPRET="1")
        log("no CUDA: Triton parity run under TRITON_INTERPRET=1 (Triton's interpreter on the CPU: checks the "
            "kernels' logic, not the GPU's code generation)")
    else:
        backends, env = [], None
        log("no CUDA: Triton kernel parity skipped")
    if backends:
        path = os.path.join(ctx.work, "parity.json")
        code, secs, _ = run_logged(log, [sys.executable, os.path.abspath(__file__), "--_parity", path,
                                         "--parity_backends", *backends], ctx.left(120), env)
        rows = read_json(path) or []
        res["parity"] = {"backends": backends, "interpreter": not cuda, "exit_code": code, "seconds": round(secs, 1),
                         "checks": len(rows), "passed": sum(r["ok"] for r in rows), "rows": rows}
        res["parity_ok"] = code == 0 and bool(rows) and all(r["ok"] for r in rows)
    else:
        res["parity"] = {"skipped": "no CUDA"}
        res["parity_ok"] = None
    # the 1-process FSDP2 path
    tiny = ctx.tiny_model()
    out = os.path.join(ctx.work, "fsdp_run")
    shutil.rmtree(out, ignore_errors=True)
    port = str(29500 + os.getpid() % 1000)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_port", port,
           os.path.join(ROOT, "accelerate_mezo.py"), "--model_name", tiny, "--dtype", "bf16", "--max_steps",
           str(args.fsdp_steps), "--eval_steps", str(args.fsdp_steps), "--num_train", "64", "--num_dev", "16",
           "--num_eval", "32", "--batch_size", "8", "--output_dir", out]
    if not cuda:
        cmd += ["--zo_backend", "eager"]  # torch.compile's first kernels take minutes on 2 CPU cores
    code, secs, lines = run_logged(log, cmd, ctx.left(300), child_env(NCCL_DEBUG="INFO", OMP_NUM_THREADS="1"))
    m = read_json(os.path.join(out, "training_metrics.json")) or {}
    exp = read_json(os.path.join(out, "experiment_config.json")) or {}
    steps = m.get("steps", [])
    fsdp = {"command": " ".join(["torchrun --nproc_per_node 1 accelerate_mezo.py", *cmd[8:]]), "exit_code": code,
            "seconds": round(secs, 1), "status": m.get("status"), "steps_done": len(steps),
            "world_size": exp.get("world_size"), "device": exp.get("device"), "numerics": exp.get("numerics"),
            "zo_backend_selected": exp.get("zo_backend_selected"), "zo_backend_fallback": exp.get("zo_backend_fallback"),
            "process_group": "nccl" if cuda else "gloo",
            "nccl_log_lines": sum("NCCL INFO" in ln for ln in lines),
            "final_test_accuracy": (m.get("final") or {}).get("test", {}).get("accuracy"),
            "median_step_time_s": statistics.median([s["step_time_s"] for s in steps]) if steps else None}
    fsdp["ok"] = (code == 0 and fsdp["status"] == "completed" and fsdp["steps_done"] == args.fsdp_steps
                  and fsdp["world_size"] == 1 and not fsdp["zo_backend_fallback"]
                  and (not cuda or fsdp["zo_backend_selected"] == "triton"))
    res["fsdp"] = fsdp
    log(f"FSDP2 1-process run: {'ok' if fsdp['ok'] else 'FAILED'} ({fsdp['status']}, {fsdp['steps_done']} steps, "
        f"backend {fsdp['zo_backend_selected']}, fallback {fsdp['zo_backend_fallback']}, {fsdp['process_group']})")
    return res


# ---------------------------------------------------------------------------- part 2
def model_flags(ctx) -> tuple[list[str] | None, list[str], str]:
    """(flags naming the model for accelerate_mezo.py, extra PYTHONPATH, description); flags None: no model."""
    args, log = ctx.args, ctx.log
    if args.tiny:
        return ["--model_name", ctx.tiny_model()], [], "tiny random llama (tests/helpers.build_model), --tiny"
    if args.model_dir:
        return ["--model_name", args.model_dir], [], f"--model_dir {args.model_dir} (a Hugging Face folder)"
    if args.gguf:
        return (["--model_name", os.path.dirname(os.path.abspath(args.gguf)), "--gguf_file",
                 os.path.basename(args.gguf)], [], f"--gguf {args.gguf}")
    site, how = assemble()
    if site:
        install_wheels(log, site)
        probe = subprocess.run([sys.executable, "-c", "from mezo import models; import gguf; "
                                "print(models.offline_model_dir())"], env=child_env([site]), capture_output=True,
                               text=True)
        found = probe.stdout.strip()
        if probe.returncode == 0 and os.path.realpath(found).startswith(os.path.realpath(site)):
            return [], [site], f"the offline package's GGUF, joined from pieces: {how}"
        return None, [], (f"GGUF joined ({how}) but the loader does not find it there (found {found or None}): "
                          f"{probe.stderr.strip().splitlines()[-1:]}")
    from mezo import models
    if models.offline_model_dir():
        return [], [], f"the offline package here ({models.offline_model_dir()})"
    return None, [], how


def part2(ctx) -> dict:
    args, log = ctx.args, ctx.log
    res = {}
    if args.tiny:  # the piece handling that brings the default model to the GPU, on a small file
        res["pieces_selftest"] = pieces_selftest(ctx.work)
        log(f"GGUF pieces self-test (split, stash, join, sha256): {res['pieces_selftest']}")
    flags, path, how = model_flags(ctx)
    res["model"] = how
    if flags is None:
        log(f"step 2 skipped: no default model on this machine: {how}")
        res["skipped"] = how
        return res
    import torch
    cuda = torch.cuda.is_available()
    out = os.path.join(ctx.work, "default_run")
    shutil.rmtree(out, ignore_errors=True)
    steps = args.default_steps
    cmd = [sys.executable, os.path.join(ROOT, "accelerate_mezo.py"), *flags, "--output_dir", out, "--memory_logging"]
    if args.tiny:
        cmd += ["--num_train", "64", "--num_dev", "16", "--num_eval", "32", "--eval_steps", str(max(1, steps // 2))]
    if steps != DEFAULT_STEPS:
        cmd += ["--max_steps", str(steps)]
    if not cuda:
        cmd += ["--zo_backend", "eager"]
    # at most 300 s: part 3 needs the rest (on an H200 the run is expected to take 1-2 minutes)
    code, secs, lines = run_logged(log, cmd, ctx.left(300), child_env(path))
    m = read_json(os.path.join(out, "training_metrics.json")) or {}
    exp = read_json(os.path.join(out, "experiment_config.json")) or {}
    mem = read_json(os.path.join(out, "memory_log.json")) or {}
    st = m.get("steps", [])
    med = lambda k: statistics.median([s[k] for s in st[1:] or st]) if st else None  # noqa: E731
    load = next((ln.split(" loaded in ")[1].split("s")[0] for ln in lines if " loaded in " in ln), None)
    res.update({
        "command": " ".join(["python", *[os.path.relpath(c, ROOT) if c.startswith(ROOT) else c for c in cmd[1:]]]),
        "exit_code": code, "wall_time_s": round(secs, 1), "status": m.get("status"), "steps_done": len(st),
        "model_load_s": float(load) if load else None, "total_time_s": m.get("total_time_s"),
        "device": exp.get("device"), "dtype": exp.get("dtype"), "numerics": exp.get("numerics"),
        "zo_backend_selected": exp.get("zo_backend_selected"), "zo_backend_fallback": exp.get("zo_backend_fallback"),
        "forward_batch_size": (exp.get("args") or {}).get("forward_batch_size"),
        "first_step_time_s": st[0]["step_time_s"] if st else None,
        "median_step_time_s": med("step_time_s"), "median_time_forward_s": med("time_forward_s"),
        "median_time_sweep_s": med("time_sweep_s"),
        "zero_shot_test": (m.get("zero_shot") or {}).get("test", {}).get("accuracy"),
        "curve": [{"step": e["step"], "dev": e["dev"].get("accuracy"), "test": e["test"].get("accuracy"),
                   "dev_loss": e.get("dev_loss")} for e in m.get("evals", [])],
        "final": m.get("final"), "peak_memory": mem.get("peak")})
    res["ok"] = code == 0 and m.get("status") == "completed" and len(st) == steps
    if not res["ok"]:  # the error, for the summary
        res["output_tail"] = [ln for ln in lines if ln.strip() and "it/s]" not in ln][-6:]
    if os.path.exists(os.path.join(out, "training_metrics.json")):
        shutil.copyfile(os.path.join(out, "training_metrics.json"), os.path.join(ctx.out, "default_run_metrics.json"))
    log(f"default run: {'ok' if res['ok'] else 'FAILED'}: {res['status']}, {len(st)} steps, wall {secs:.0f}s, "
        f"curve {[(c['step'], c['dev'], c['test']) for c in res['curve']]}")
    # the step against two plain forwards, on the same model and batches
    jpath = os.path.join(ctx.out, "step_smollm2.json")
    cmd = [sys.executable, os.path.join(ROOT, "bench", "bench_step_smollm2.py"), "--json", jpath,
           "--steps", str(args.step_bench_steps), "--warmup", "1" if args.tiny else "2"]
    cmd += flags + ([] if cuda else ["--backend", "eager"])
    code, secs, _ = run_logged(log, cmd, ctx.left(150), child_env(path, OMP_NUM_THREADS="1" if not cuda else "8"))
    sb = read_json(jpath) or {}
    res["step_vs_two_forwards"] = {"command": " ".join(["python", "bench/bench_step_smollm2.py", *cmd[2:]]).replace(
        jpath, "step_smollm2.json"), "exit_code": code, "seconds": round(secs, 1), "rows": sb.get("rows"),
        "split_s": sb.get("split_s"), "z_evaluations_per_step": sb.get("z_evaluations_per_step"),
        "kernel_ns_per_element": sb.get("kernel_ns_per_element"), "backend": sb.get("backend"),
        "forward_batch_size": sb.get("forward_batch_size")}
    return res


# ---------------------------------------------------------------------------- part 3
def part3(ctx) -> dict:
    args, log = ctx.args, ctx.log
    jpath, mpath = os.path.join(ctx.out, "bench_gpu_step.json"), os.path.join(ctx.work, "bench_gpu_step.md")
    cmd = [sys.executable, os.path.join(ROOT, "bench", "bench_gpu_step.py"), "--output", jpath, "--markdown", mpath,
           "--repeats", str(args.repeats)]
    if args.tiny:
        cmd += ["--tiny"]
    else:
        cmd += ["--sizes", *args.sizes, "--budget_s", str(max(30, int(ctx.left(600) - 60)))]
    code, secs, _ = run_logged(log, cmd, ctx.left(600), child_env(OMP_NUM_THREADS="1" if args.tiny else "8"))
    data = read_json(jpath) or {}
    rows = data.get("rows", [])
    md = open(mpath).read() if os.path.exists(mpath) else None
    res = {"command": " ".join(["python", "bench/bench_gpu_step.py", *cmd[2:]]).replace(jpath, "bench_gpu_step.json")
           .replace(mpath, "bench_gpu_step.md"), "exit_code": code, "seconds": round(secs, 1), "rows": len(rows),
           "skipped": sum(1 for r in rows if "skipped" in str(r.get("note", ""))),
           "oom": sum(1 for r in rows if r.get("time_s") == "OOM"),
           "errors": [f"{r['size']} {r.get('seq_len')} {r['method']}: {r['error']}" for r in rows if r.get("error")],
           "markdown": md}
    res["ok"] = code == 0 and bool(rows) and not res["errors"]
    return res


# ---------------------------------------------------------------------------- summary
def fmt(v, spec=".3f"):
    return "-" if v is None else (v if isinstance(v, str) else format(v, spec))


def markdown(s: dict) -> str:
    e, a = s["environment"], s["args"]
    gpu = e.get("gpu") or "no GPU (CPU)"
    out = [f"### GPU check: `{s['command']}`\n",
           f"{e['date_utc']}; {gpu}" + (f" ({e['gpu_memory_gib']} GiB, sm_{e['capability'].replace('.', '')})"
                                       if e.get("gpu") else "")
           + (f"; nvidia-smi: {e['nvidia_smi']}" if e.get("nvidia_smi") else "") + f"; {e['cpus']} CPUs.",
           f"Python {e['python']}, torch {e['torch']} (CUDA {e.get('torch_cuda')}, NCCL {e.get('nccl')}), triton "
           f"{e['triton']}, transformers {e['transformers']}, peft {e['peft']}, accelerate {e['accelerate']}, "
           f"gguf {e['gguf']}. Code: commit {e.get('git_commit') or '(no .git)'}, sources sha256 "
           f"{e['code_sha256']} (`python bench/gpu_check.py --fingerprint`).",
           f"Total {s.get('seconds', 0):.0f} s." + (" **--tiny: CPU smoke test, the numbers mean nothing.**"
                                                   if a["tiny"] else "")]
    p = s["parts"]
    if "1" in p:
        r = p["1"]
        out.append("\n#### 1. Kernel parity and the 1-process FSDP2 path\n")
        par = r.get("parity", {})
        if par.get("rows"):
            where = "Triton interpreter on CPU" if par.get("interpreter") else "GPU"
            out.append(f"mezo.zo.parity_check, {par['passed']}/{par['checks']} passed ({where}); largest "
                       "|difference| of the compared outputs (Rademacher z and rounding bits must be bit-exact, "
                       "Gaussian z within 1e-6):\n")
            out.append("| backend | generator | dist | numerics | result | max abs diff | bit-exact outputs |")
            out.append("|---|---|---|---|---|---:|---|")
            for row in par["rows"]:
                c = row["compared"]
                out.append(f"| {row['backend']} | {row['generator']} | {row['dist']} | {row['numerics']} | "
                           f"{'ok' if row['ok'] else 'FAIL: ' + str(row['reason'])} | "
                           f"{max((x['max_abs_diff'] for x in c), default=float('nan')):.3g} | "
                           f"{sum(x['bit_exact'] for x in c)}/{len(c)} |")
        else:
            out.append(f"Kernel parity: skipped ({par.get('skipped', 'not run')}).")
        f = r.get("fsdp", {})
        out.append(f"\nFSDP2, one process ({f.get('process_group')}): `{f.get('command')}`: "
                   f"**{'ok' if f.get('ok') else 'FAILED'}**: status {f.get('status')}, {f.get('steps_done')} steps, "
                   f"device {f.get('device')}, numerics {f.get('numerics')}, kernel backend "
                   f"{f.get('zo_backend_selected')} (fallback: {f.get('zo_backend_fallback')}), median step "
                   f"{fmt(f.get('median_step_time_s'))} s, {f.get('nccl_log_lines')} NCCL INFO lines, "
                   f"{f.get('seconds')} s in all.")
    if "2" in p:
        r = p["2"]
        out.append("\n#### 2. The default run\n")
        if r.get("skipped"):
            out.append(f"Skipped: no default model on this machine ({r['skipped']}).")
        else:
            out.append(f"`{r.get('command')}`; model: {r.get('model')}. **{'completed' if r.get('ok') else 'FAILED'}**"
                       f" ({r.get('status')}, {r.get('steps_done')} steps), {r.get('device')}, {r.get('dtype')}, "
                       f"numerics {r.get('numerics')}, kernel backend {r.get('zo_backend_selected')} (fallback: "
                       f"{r.get('zo_backend_fallback')}), forwards of {r.get('forward_batch_size')}.\n")
            if r.get("output_tail"):
                out.append("Its output ended:\n\n```\n" + "\n".join(r["output_tail"]) + "\n```\n")
            out.append("| step | dev accuracy | test accuracy |")
            out.append("|---:|---:|---:|")
            out.append(f"| 0 (zero-shot) | - | {fmt(r.get('zero_shot_test'))} |")
            for c in r.get("curve", []):
                out.append(f"| {c['step']} | {fmt(c['dev'])} | {fmt(c['test'])} |")
            pk = r.get("peak_memory") or {}
            gpu_mib = pk.get("gpu_used_mib")
            out.append(f"\nWall time {fmt(r.get('wall_time_s'), '.0f')} s (model load {fmt(r.get('model_load_s'), '.1f')}"
                       f" s, training + evaluations {fmt(r.get('total_time_s'), '.1f')} s); step 1 "
                       f"{fmt(r.get('first_step_time_s'))} s, then median {fmt(r.get('median_step_time_s'), '.4f')} s "
                       f"(time_forward_s {fmt(r.get('median_time_forward_s'), '.4f')}, time_sweep_s "
                       f"{fmt(r.get('median_time_sweep_s'), '.4f')}); peak "
                       + (f"GPU {gpu_mib:.0f} MiB (nvidia-smi), " if gpu_mib else "")
                       + (f"torch max allocated {pk['max_allocated_bytes'] / 2 ** 30:.2f} GiB, "
                          if pk.get("max_allocated_bytes") else "")
                       + (f"RSS {pk['rss_bytes'] / 2 ** 30:.2f} GiB." if pk.get("rss_bytes") else "-"))
            sb = r.get("step_vs_two_forwards") or {}
            if sb.get("rows"):
                out.append(f"\nStep vs two plain forwards (`{sb['command']}`, backend {sb.get('backend')}, forwards "
                           f"of {sb.get('forward_batch_size')}):\n")
                out.append("| method | median step (s) | vs 2 forwards |")
                out.append("|---|---:|---:|")
                for row in sb["rows"]:
                    out.append(f"| {row['method']} | {row['median_s']:.4f} | {row['ratio']:.2f}x |")
                sp = sb.get("split_s") or {}
                out.append(f"\nstochastic step split: forward {fmt(sp.get('forward'), '.4f')} s, update sweep "
                           f"{fmt(sp.get('sweep'), '.4f')} s; z evaluations per element per step "
                           f"{fmt(sb.get('z_evaluations_per_step'))}; kernels (ns / element, one z evaluation): "
                           + ", ".join(f"{k} {v:.3f}" for k, v in (sb.get("kernel_ns_per_element") or {}).items()))
            else:
                out.append(f"\nStep vs two forwards: no result (exit {sb.get('exit_code')}).")
    if "3" in p:
        r = p["3"]
        out.append(f"\n#### 3. Step time and memory, OPT (`{r.get('command')}`)\n")
        out.append(f"{r.get('rows')} rows, {r.get('oom')} OOM, {r.get('skipped')} skipped for time"
                   + (f", errors: {'; '.join(r['errors'])}" if r.get("errors") else "") + ".\n")
        out.append(r.get("markdown") or f"no tables (exit {r.get('exit_code')}).")
    for k, v in s.get("earlier", {}).items():
        out.append(f"\n(part {k}: from an earlier call on this machine, {v})")
    return "\n".join(out) + "\n"


class Ctx:
    def __init__(self, args, out, work, log):
        self.args, self.out, self.work, self.log = args, out, work, log
        self.t0 = time.monotonic()
        self._tiny = None

    def left(self, cap: float) -> float:
        return max(1.0, min(cap, self.args.budget_s - (time.monotonic() - self.t0)))

    def tiny_model(self) -> str:
        if self._tiny is None:
            path = os.path.join(self.work, "tiny_llama")
            if not os.path.exists(os.path.join(path, "model.safetensors")):
                sys.path.insert(0, os.path.join(ROOT, "tests"))
                from helpers import build_model
                build_model(path)
            self._tiny = path
        return self._tiny


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="every part on the CPU with tiny sizes (smoke test)")
    ap.add_argument("--out", default=None, help="results folder (default $OUT, else bench/results/gpu_check[_tiny])")
    ap.add_argument("--work", default=None, help="runs' own outputs (checkpoints): default <stash>/work")
    ap.add_argument("--parts", default="1,2,3", help="comma-separated parts to run")
    ap.add_argument("--model_dir", default=None, help="part 2: a Hugging Face folder (safetensors) of the model")
    ap.add_argument("--gguf", default=None, help="part 2: a GGUF file of the model")
    ap.add_argument("--budget_s", type=float, default=540, help="wall-clock budget for the parts run in this call")
    ap.add_argument("--default_steps", type=int, default=None, help="part 2 steps (default 300; --tiny 4)")
    ap.add_argument("--step_bench_steps", type=int, default=None, help="part 2 bench_step_smollm2 steps (20; --tiny 2)")
    ap.add_argument("--fsdp_steps", type=int, default=5)
    ap.add_argument("--sizes", nargs="+", default=["1.3b", "2.7b", "6.7b", "13b"])
    ap.add_argument("--repeats", type=int, default=None, help="part 3 timed repeats (default 3; --tiny 1)")
    ap.add_argument("--parity_backends", nargs="+", default=["triton"], help="part 1 on a GPU (add compile: slow)")
    ap.add_argument("--stash_only", action="store_true", help="stash the travelling GGUF pieces and stop")
    ap.add_argument("--merge_earlier", action="store_true",
                    help="add the parts not run now from the summary an earlier call left on this machine")
    ap.add_argument("--_parity", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--fingerprint", action="store_true", help="print the sources' sha256 (see summary) and stop")
    args = ap.parse_args(argv)
    if args.fingerprint:
        print(code_fingerprint())
        return 0
    if args._parity:
        return parity_main(args._parity, args.parity_backends)
    args.default_steps = args.default_steps or (4 if args.tiny else DEFAULT_STEPS)
    args.step_bench_steps = args.step_bench_steps or (2 if args.tiny else 20)
    args.repeats = args.repeats or (1 if args.tiny else 3)
    out = args.out or os.environ.get("OUT") or os.path.join(ROOT, "bench", "results",
                                                            "gpu_check_tiny" if args.tiny else "gpu_check")
    os.makedirs(out, exist_ok=True)
    work = args.work or os.path.join(STASH, "work_tiny" if args.tiny else "work")
    os.makedirs(work, exist_ok=True)
    log = Log(os.path.join(out, "gpu_check.log"))
    stash_pieces(log)
    if args.stash_only:
        site, how = assemble()
        log(f"stashed in {STASH}: {how}")
        return 0
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    cmdline = "bash bench/gpu_check.sh " + " ".join(argv if argv is not None else sys.argv[1:])
    summary = {"command": cmdline.strip(), "args": vars(args), "environment": environment(args), "parts": {},
               "results_folder": out}
    ctx = Ctx(args, out, work, log)
    e = summary["environment"]
    log(f"gpu_check: {e.get('gpu') or 'no GPU'}; torch {e['torch']}, triton {e['triton']}, transformers "
        f"{e['transformers']}; parts {','.join(parts)}; budget {args.budget_s:.0f}s; results in {out}")
    earlier_path = os.path.join(STASH, "summary_last.json")
    if args.merge_earlier:
        earlier = read_json(earlier_path) or {}
        summary["earlier"] = {}
        for k, v in (earlier.get("parts") or {}).items():
            if k not in parts:
                summary["parts"][k] = v
                summary["earlier"][k] = f"{earlier.get('environment', {}).get('date_utc')}, `{earlier.get('command')}`"

    def save():
        summary["seconds"] = time.monotonic() - ctx.t0
        with open(os.path.join(out, "summary.json"), "w") as f:
            json.dump(summary, f, indent=1, default=str)
        with open(os.path.join(out, "summary.md"), "w") as f:
            f.write(markdown(summary))
        if not args.tiny:
            shutil.copyfile(os.path.join(out, "summary.json"), earlier_path)

    save()
    for part, fn in (("1", part1), ("2", part2), ("3", part3)):
        if part not in parts:
            continue
        log(f"\n=== part {part} ({ctx.left(1e9):.0f}s of the budget left)")
        try:
            summary["parts"][part] = fn(ctx)
        except Exception as ex:  # noqa: BLE001 - a broken part does not stop the others
            import traceback
            log(traceback.format_exc())
            summary["parts"][part] = {"ok": False, "error": f"{type(ex).__name__}: {ex}"}
        save()
    oks = {k: v.get("ok") if k != "1" else (v.get("parity_ok") is not False and (v.get("fsdp") or {}).get("ok"))
           for k, v in summary["parts"].items() if k in parts and not v.get("skipped")}
    save()
    log(f"\ngpu_check done in {time.monotonic() - ctx.t0:.0f}s: " + ", ".join(
        f"part {k} {'ok' if v else 'FAILED'}" for k, v in oks.items())
        + "".join(f", part {k} skipped" for k, v in summary["parts"].items() if v.get("skipped")))
    files = sorted(os.listdir(out))
    log(f"files: {', '.join(files)}")
    if len(files) > 8 or set(files) - set(OUT_FILES):
        log(f"note: a device call returns at most 8 files; expected only {', '.join(OUT_FILES)}")
    return 0 if all(oks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
