#!/usr/bin/env python
"""MeZO fine-tuning: `python accelerate_mezo.py`, `torchrun --nproc_per_node N accelerate_mezo.py`
or `accelerate launch accelerate_mezo.py`. `--help` lists the flags; the loop is mezo/train.py."""
import sys

from mezo.train import main

if __name__ == "__main__":
    sys.exit(main())
