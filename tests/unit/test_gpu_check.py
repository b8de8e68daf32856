"""bench/gpu_check.sh's Python parts that run in seconds on a CPU: the GGUF pieces that bring the
default model to the GPU machine, the paper's figures beside ours, the parity recorder and the
summary. The whole `bash bench/gpu_check.sh --tiny` takes ~70 s on 2 cores: run it by hand."""
import json
import os
import subprocess
import sys

import pytest

from bench import bench_gpu_step, gpu_check
from bench.export_default_model import sha256, split


def test_pieces_join_only_when_all_are_there(tmp_path):
    """split -> stash (one call with piece 1, the next with piece 2) -> join, sha256 checked."""
    assert gpu_check.pieces_selftest(str(tmp_path)) == "ok"


def test_corrupt_piece_is_refused(tmp_path):
    src = tmp_path / "m.gguf"
    src.write_bytes(os.urandom(10_001))
    folders = split(str(src), str(tmp_path / "travel"), 2, "pkg")
    piece = os.path.join(folders[1], "m.gguf.2")
    data = bytearray(open(piece, "rb").read())
    data[7] ^= 1
    open(piece, "wb").write(bytes(data))
    stash = str(tmp_path / "stash")
    gpu_check.stash_pieces(lambda msg="": None, stash, str(tmp_path / "travel"))
    site, why = gpu_check.assemble(stash)
    assert site is None and "m.gguf.2: sha256" in why
    manifest = json.load(open(os.path.join(folders[0], "manifest.json")))
    assert manifest["sha256"] == sha256(str(src)) and [p["size"] for p in manifest["pieces"]] == [5001, 5000]


def test_no_pieces_says_how_to_make_them(tmp_path):
    site, why = gpu_check.assemble(str(tmp_path))
    assert site is None and "export_default_model.py pieces" in why


def test_paper_figures_from_the_csv_files():
    mem, tim = bench_gpu_step.PAPER_MEM_GB, bench_gpu_step.PAPER_TIME_S
    assert mem["13b"]["Zero-shot / MeZO"] == (26.0, 1) and mem["13b"]["Full-parameter FT"] == (316.0, 4)
    assert tim["1.3b"]["MeZO bsz 16"] == (0.815, 1) and tim["13b"]["FT bsz 8"] == (13.638, 4)
    assert "6.7b" not in tim  # Table 23 has no 6.7B row


def test_bench_gpu_step_tiny_writes_rows_and_tables(tmp_path):
    out, md = tmp_path / "b.json", tmp_path / "b.md"
    assert bench_gpu_step.main(["--tiny", "--repeats", "1", "--output", str(out), "--markdown", str(md)]) == 0
    rows = json.load(open(out))["rows"]
    timed = {r["method"] for r in rows if not r.get("memory_only")}
    assert timed == {"inference", "mezo_stochastic[eager]", "mezo_inplace[eager]", "reference", "ft_adam"}
    assert all(isinstance(r["time_s"], float) for r in rows)
    assert {r["method"] for r in rows if r.get("memory_only")} == {"inference", "mezo_stochastic[eager]", "ft_adam"}
    text = md.read_text()
    assert "paper MeZO bsz 16" in text and "paper full FT" in text and "| OPT-tiny |" in text
    # fed 13B rows, the paper's figures stand beside ours
    fake = [{"size": "13b", "seq_len": 400, "method": m, "time_s": 1.0, "peak_gib": 30.0, "batch_size": 16}
            for m in ("inference", "mezo_stochastic[triton]")]
    table = bench_gpu_step.tables(fake, {"device": "GPU", "torch": "x", "args": {
        "batch_size": 16, "ft_batch_size": 8, "repeats": 3, "seq_lens": [400]}})
    assert "| OPT-13b | 1.000 | 1.000 | 0.50x | 2.702 | 1.927 | 13.638 (4 GPUs) |" in table


def test_parity_part_records_every_comparison(tmp_path):
    pytest.importorskip("triton")
    out = tmp_path / "parity.json"
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": gpu_check.ROOT}
    r = subprocess.run([sys.executable, os.path.join(gpu_check.ROOT, "bench", "gpu_check.py"), "--_parity", str(out),
                        "--parity_backends", "triton"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = json.load(open(out))
    assert len(rows) == 12 and all(r["ok"] for r in rows)  # 2 generators x 2 distributions x 3 numerics
    for row in rows:
        for c in row["compared"]:
            assert c["bit_exact"] or (c["dist"] == "gaussian" and c["max_abs_diff"] <= 1e-6)


def test_summary_markdown_says_what_was_skipped():
    s = {"command": "bash bench/gpu_check.sh", "args": {"tiny": False}, "seconds": 1.0,
         "environment": {"date_utc": "d", "cpus": 16, "python": "3.12", "torch": "2.11", "triton": "3.6",
                         "transformers": "5.17", "peft": "p", "accelerate": "a", "gguf": None, "code_sha256": "c",
                         "gpu": "NVIDIA H200", "gpu_memory_gib": 139.8, "capability": "9.0", "nccl": "2.27.7"},
         "parts": {"1": {"parity": {"skipped": "no CUDA"}, "fsdp": {"ok": False, "status": None}},
                   "2": {"skipped": "1 of 2 GGUF pieces here"}}}
    md = gpu_check.markdown(s)
    assert "Kernel parity: skipped (no CUDA)" in md and "**FAILED**" in md
    assert "Skipped: no default model on this machine (1 of 2 GGUF pieces here)" in md
    assert "NVIDIA H200 (139.8 GiB, sm_90)" in md
