#!/usr/bin/env python
"""MeZO fine-tuning: `python accelerate_mezo.py`, `torchrun --nproc_per_node N accelerate_mezo.py`
or `accelerate launch accelerate_mezo.py`. `--help` lists the flags; a run is mezo/train.py, the MeZO loop mezo/zo_trainer.py."""
import sys

from mezo import distributed
from mezo.train import main

if __name__ == "__main__":
    code = main()
    if distributed.launched_distributed():  # torchrun / accelerate launch worker
        distributed.exit_process(code)
    sys.exit(code)
