"""Run a list of training commands locally, one after another, skipping completed runs."""
from __future__ import annotations

import json
import os
import subprocess

from mezo.experiments.command import to_string, training_command


def run_status(output_dir: str) -> str | None:
    """'completed' / 'running' / 'failed' from training_metrics.json, None if absent or unreadable."""
    try:
        with open(os.path.join(output_dir, "training_metrics.json"), encoding="utf-8") as f:
            return json.load(f).get("status")
    except (OSError, ValueError, AttributeError):
        return None


def run_all(runs: list[tuple[str, dict]], *, nproc: int = 1, cwd: str | None = None,
            keep_going: bool = True, log=print) -> dict[str, int]:
    """Returns {'completed': n, 'skipped': n, 'failed': n}."""
    counts = {"completed": 0, "skipped": 0, "failed": 0}
    for i, (name, args) in enumerate(runs, 1):
        if run_status(args["output_dir"]) == "completed":
            log(f"[{i}/{len(runs)}] skip {name}: already completed")
            counts["skipped"] += 1
            continue
        cmd = training_command(args, nproc)
        log(f"[{i}/{len(runs)}] {name}\n  {to_string(cmd)}")
        rc = subprocess.call(cmd, cwd=cwd)
        if rc == 0:
            counts["completed"] += 1
        else:
            counts["failed"] += 1
            log(f"  -> exit code {rc}")
            if not keep_going:
                break
    return counts
