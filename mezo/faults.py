"""Fault injection for the tests, the one hook the MeZO loop calls: set from the environment,
inert otherwise. The tests use it to check that a non-finite step is caught and that a kill
between two files loses nothing.

    MEZO_FAULT_NONFINITE_STEPS=3,5   steps (1-based) whose L+ and projected gradient become NaN
    MEZO_FAULT_KILL_AFTER_STEP=4     SIGKILL the process right after step 4's trajectory line
"""
from __future__ import annotations

import math
import os
import signal

NONFINITE_ENV = "MEZO_FAULT_NONFINITE_STEPS"
KILL_ENV = "MEZO_FAULT_KILL_AFTER_STEP"


class Faults:
    def __init__(self, environ=os.environ):
        self.nonfinite = {int(s) for s in environ.get(NONFINITE_ENV, "").split(",") if s.strip()}
        self.kill_after = int(environ.get(KILL_ENV) or 0)

    def corrupt(self, step: int, grads: list, losses: list) -> None:
        """Step `step` (1-based) as measured: made non-finite when asked."""
        if step in self.nonfinite:
            losses[0] = (math.nan, losses[0][1])
            grads[0] = math.nan

    def after_trajectory_line(self, step: int) -> None:
        if step == self.kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
