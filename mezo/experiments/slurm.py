"""SLURM batch scripts for grid runs: one sbatch file per run plus submit_all.sh.

Each script starts one torchrun per node through `srun`; the nodes meet through torchrun's c10d
rendezvous on the first node. torchrun is `<python> -m torch.distributed.run` with the Python that
wrote the scripts (SlurmOptions.python, --slurm_python), not whatever `torchrun` comes first on the
node's PATH, so a job runs the code and libraries its dry run checked; `--slurm_setup` adds a shell
line before it (modules, an environment to activate).

Preemption and time limits (mezo/checkpoint.py): `--signal=USR1@120` makes SLURM send SIGUSR1 to
every process of the job step two minutes before the time limit; the training ranks agree at the
next step boundary, write a checkpoint and exit with EXIT_PREEMPTED (75). torchrun runs with
SIGUSR1 ignored (a signal it does not handle would kill it, and the workers with it, mid-save);
the workers install their own handler. torchrun reports a failed worker as exit 1, so the script
also recognises a preemption by training_metrics.json saying "preempted" (written by this job),
and then `scontrol requeue`s itself. SIGTERM (preemption by another job) reaches the workers too;
the batch shell traps it so that it waits for srun and can requeue. Every start passes
`--resume_from_checkpoint auto`: the newest complete checkpoint in the output folder, or a fresh
start when there is none.
"""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass

from mezo.errors import EXIT_PREEMPTED  # imports nothing heavy: this module stays torch-free
from mezo.experiments.command import SCRIPT, flag_args


@dataclass
class SlurmOptions:
    partition: str
    gpus: int = 1                 # GPUs per node (= processes per node)
    nodes: int = 1
    time: str = "24:00:00"
    account: str | None = None
    cpus_per_gpu: int = 8
    python: str = sys.executable  # the interpreter that runs torchrun (-m torch.distributed.run)
    setup: str | None = None      # a shell line run first (module load ..., source .../activate)


def sbatch_script(name: str, args: dict, opts: SlurmOptions, workdir: str) -> str:
    out_dir = args["output_dir"]
    train_cmd = " ".join(shlex.quote(a) for a in [SCRIPT] + flag_args(args))
    header = [
        "#!/bin/bash",
        f"#SBATCH --job-name={name[:100]}",
        f"#SBATCH --partition={opts.partition}",
        f"#SBATCH --nodes={opts.nodes}",
        "#SBATCH --ntasks-per-node=1",
        f"#SBATCH --gpus-per-node={opts.gpus}",
        f"#SBATCH --cpus-per-task={opts.cpus_per_gpu * opts.gpus}",
        f"#SBATCH --time={opts.time}",
        f"#SBATCH --output={out_dir}/slurm-%j.out",
        "#SBATCH --open-mode=append",  # a requeued job appends to its log
        "#SBATCH --requeue",
        "#SBATCH --signal=USR1@120",
    ]
    if opts.account:
        header.insert(3, f"#SBATCH --account={opts.account}")
    out = shlex.quote(out_dir)
    body = f"""
set -euo pipefail
cd {shlex.quote(workdir)}
{opts.setup or "# (no --slurm_setup line)"}
mkdir -p {out}
if grep -qs '"status": *"completed"' {out}/training_metrics.json; then
    echo "already completed: {out_dir}"; exit 0
fi
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MASTER_PORT=$((29500 + SLURM_JOB_ID % 1000))
STAMP={out}/.slurm-start-$SLURM_JOB_ID
touch "$STAMP"
trap 'echo "SIGTERM: waiting for the training ranks to checkpoint"' TERM
set +e
srun --kill-on-bad-exit=1 bash -c 'trap "" USR1; exec "$@"' torchrun \\
    {shlex.quote(opts.python)} -m torch.distributed.run --nnodes "$SLURM_NNODES" --nproc_per_node {opts.gpus} \\
    --rdzv_id "$SLURM_JOB_ID" --rdzv_backend c10d --rdzv_endpoint "$MASTER_ADDR:$MASTER_PORT" \\
    {train_cmd} --resume_from_checkpoint auto
RC=$?
set -e
if [ "$RC" -eq {EXIT_PREEMPTED} ] || {{ [ -n "$(find {out}/training_metrics.json -newer "$STAMP" 2>/dev/null)" ] \\
        && grep -qs '"status": *"preempted"' {out}/training_metrics.json; }}; then
    echo "preempted (exit $RC): requeueing job $SLURM_JOB_ID; it resumes from the last checkpoint"
    rm -f "$STAMP"
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
fi
rm -f "$STAMP"
exit "$RC"
"""
    return "\n".join(header) + "\n" + body


def write_scripts(runs: list[tuple[str, dict]], opts: SlurmOptions, script_dir: str, workdir: str) -> list[str]:
    """Write <script_dir>/<name>.sbatch per (name, args) and submit_all.sh; returns the paths."""
    os.makedirs(script_dir, exist_ok=True)
    paths = []
    for name, args in runs:
        os.makedirs(args["output_dir"], exist_ok=True)  # SLURM does not create the --output folder
        path = os.path.join(script_dir, f"{name}.sbatch")
        with open(path, "w", encoding="utf-8") as f:
            f.write(sbatch_script(name, args, opts, workdir))
        paths.append(path)
    lines = ["#!/bin/bash", "# Submit every run of the grid; runs already completed are skipped.",
             "set -euo pipefail", 'cd "$(dirname "$0")"']
    for (name, args), path in zip(runs, paths):
        done = shlex.quote(os.path.join(args["output_dir"], "training_metrics.json"))
        lines.append(f"if grep -qs '\"status\": *\"completed\"' {done}; then echo 'skip {name} (completed)'; "
                     f"else sbatch {shlex.quote(os.path.basename(path))}; fi")
    submit = os.path.join(script_dir, "submit_all.sh")
    with open(submit, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    os.chmod(submit, 0o755)
    return paths + [submit]
