"""Run a list of training commands locally, one after another: completed runs are skipped,
unfinished ones continued, and a folder holding a run of other settings is refused up front."""
from __future__ import annotations

import json
import os
import subprocess

from mezo.errors import BadInput
from mezo.experiments.command import flag_args, to_string, training_command

# run_config.json keys that describe where a run is written, not what it computes
NOT_COMPARED = ("output_dir", "overwrite_output_dir", "resume_from_checkpoint", "resume_trajectory")


def run_status(output_dir: str) -> str | None:
    """'completed' / 'running' / 'failed' / 'preempted' from training_metrics.json, None if absent or unreadable."""
    try:
        with open(os.path.join(output_dir, "training_metrics.json"), encoding="utf-8") as f:
            return json.load(f).get("status")
    except (OSError, ValueError, AttributeError):
        return None


def resumable(args: dict) -> bool:
    """Only MeZO runs checkpoint and resume (--trainer mezo, not a baseline)."""
    return args.get("trainer", "mezo") == "mezo" and not args.get("zero_shot") and not args.get("icl")


def check_folders(runs: list[tuple[str, dict]]) -> dict[str, str]:
    """{output_dir: "new" | "completed" | "unfinished"} for each run. A folder that holds a run
    must hold this run: its run_config.json has the value the grid gives every flag the grid sets
    (compared after the training parser reads both); otherwise BadInput naming the folder and the
    first flag that differs (a finished run of other settings must never count as this one)."""
    from mezo import config, telemetry
    parser = config.build_parser()
    parser.raising = True
    states = {}
    for name, args in runs:
        out = args["output_dir"]
        if not telemetry.run_files(out):
            states[out] = "new"
            continue
        try:
            with open(os.path.join(out, "run_config.json"), encoding="utf-8") as f:
                stored = json.load(f)
        except (OSError, ValueError) as e:
            raise BadInput(f"{out}: holds a run whose run_config.json cannot be read ({type(e).__name__}), so it "
                           f"cannot be told apart from another run's; move it away or pass another --output_dir") from None
        wanted = vars(parser.parse_args(flag_args(args)))
        for key in args:
            if key in NOT_COMPARED or key not in wanted:
                continue
            if stored.get(key) != wanted[key]:
                raise BadInput(f"{out}: holds a run with --{key} {stored.get(key)!r}, the grid's run {name} has "
                               f"{wanted[key]!r}; move that folder away or pass another --output_dir")
        states[out] = "completed" if run_status(out) == "completed" else "unfinished"
    return states


def run_all(runs: list[tuple[str, dict]], *, nproc: int = 1, cwd: str | None = None,
            keep_going: bool = True, log=print, states: dict | None = None) -> dict[str, int]:
    """Returns {'completed': n, 'skipped': n, 'failed': n}. `states`: check_folders(runs)."""
    states = check_folders(runs) if states is None else states
    counts = {"completed": 0, "skipped": 0, "failed": 0}
    for i, (name, args) in enumerate(runs, 1):
        state = states.get(args["output_dir"], "new")
        if state == "completed":
            log(f"[{i}/{len(runs)}] skip {name}: already completed")
            counts["skipped"] += 1
            continue
        if state == "unfinished":  # continue it (MeZO), or start it again (a trainer that cannot resume)
            args = {**args, **({"resume_from_checkpoint": "auto"} if resumable(args) else {"overwrite_output_dir": True})}
        cmd = training_command(args, nproc)
        note = f" (unfinished: {'resuming' if resumable(args) else 'starting again'})" if state == "unfinished" else ""
        log(f"[{i}/{len(runs)}] {name}{note}\n  {to_string(cmd)}")
        rc = subprocess.call(cmd, cwd=cwd)
        if rc == 0:
            counts["completed"] += 1
        else:
            counts["failed"] += 1
            log(f"  -> exit code {rc}")
            if not keep_going:
                break
    return counts
