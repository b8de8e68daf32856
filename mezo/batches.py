"""Which examples each forward pass scores, and how their losses become one number.

A step's global batch is a pure function of (step, micro-batch): examples in seeded per-epoch
permutations. It is cut into forwards of `forward_batch_size` examples, always at the same
places in global order, and rank r runs the forwards of its contiguous share. So each forward
sees the same examples, with the same padding and the same tensor shapes, whatever the number
of ranks, and each example's loss comes out with the same bits on 1, 2 or N processes (same
threads per process; see README "Bit-identical across world sizes"). The per-example losses
are then gathered and summed with `math.fsum`, the correctly rounded sum, which has no order
to depend on: every rank, at every world size, gets the same loss.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from mezo import distributed as D
from mezo.scoring import example_losses, forward_shape

# examples per forward on CPU: the largest of CPU_FORWARD_BATCHES that divides the per-process
# batch on every number of processes in CPU_SAME_FORWARDS (and on the run's own), so that a run
# scores the same forwards, with the same bits, on 1, 2 or 4 processes. Bigger forwards of the
# stochastic numerics' dual forward multiply its real tokens in bigger matrix products (forwards
# of 4 instead of 2: 0.84x the dual forward's time on the default run; BENCHMARKS.md section 7)
CPU_FORWARD_BATCHES = (4, 2)
CPU_SAME_FORWARDS = (1, 2, 4)


def forward_batch_size(flag: str, batch_size: int, world: int, device_type: str) -> int:
    """The examples per forward for `--forward_batch_size flag` (ValueError: what is wrong).
    "auto" on CPU: the largest of CPU_FORWARD_BATCHES dividing the per-process batch on each of
    CPU_SAME_FORWARDS processes that divides the batch, and on `world` (batch 16: 4; batch 8: 2);
    else 2 when the run's own share is even, else 1 (then other world sizes may score other
    forwards). On GPU the whole per-rank share in one forward, since there a forward of 2 costs
    about as much as one of 16."""
    share = batch_size // world
    if flag == "auto":
        if device_type == "cpu":
            shares = [batch_size // w for w in (*CPU_SAME_FORWARDS, world) if batch_size % w == 0]
            return next((f for f in CPU_FORWARD_BATCHES if all(s % f == 0 for s in shares)),
                        2 if share % 2 == 0 else 1)
        return share
    n = int(flag) if flag.isdigit() else 0
    if n < 1:
        raise ValueError(f"--forward_batch_size must be a positive integer or 'auto' (got {flag!r})")
    if share % n:
        raise ValueError(f"--forward_batch_size {n} does not divide the per-process batch ({batch_size} over {world} "
                         f"process{'es' if world > 1 else ''} = {share}); pick a divisor of {share}")
    return n


class BatchStream:
    """Examples in seeded per-epoch permutations; the global micro-batch of (step, micro) is a
    pure function of the step; each rank takes its contiguous slice of it, in forwards of
    `forward` examples."""

    def __init__(self, n: int, batch_size: int, accum: int, seed: int, forward: int | None = None):
        self.n, self.bs, self.accum, self.seed = n, batch_size, accum, seed
        self.forward = forward or batch_size // D.world_size()
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms[epoch] = np.random.RandomState(self.seed + epoch).permutation(self.n)
        return self._perms[epoch]

    def global_batch(self, step: int, micro: int) -> list[int]:
        start = (step * self.accum + micro) * self.bs
        return [int(self._perm(p // self.n)[p % self.n]) for p in range(start, start + self.bs)]

    def local_batch(self, step: int, micro: int) -> list[int]:
        g = self.global_batch(step, micro)
        per = self.bs // D.world_size()
        return g[D.rank() * per:(D.rank() + 1) * per]

    def local_forwards(self, step: int, micro: int) -> list[list[int]]:
        """This rank's examples of (step, micro), one list per forward pass."""
        mine = self.local_batch(step, micro)
        return [mine[i:i + self.forward] for i in range(0, len(mine), self.forward)]


def rank_batches(order: list[int], batch_size: int) -> list[list[int]]:
    """`order` cut into batches of `batch_size` at fixed places; this rank's are every world-th
    one, padded with empty batches so that every rank runs the same number of forwards (under
    FSDP2 each forward all-gathers). Each batch is the same whatever the number of ranks."""
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    w = D.world_size()
    mine = batches[D.rank()::w]
    return mine + [[]] * (math.ceil(len(batches) / w) - len(mine))


def global_mean(values: torch.Tensor, counts: torch.Tensor) -> float:
    """sum(values) / sum(counts) over every rank's per-example values (fp64, the same number of
    them on each rank), summed exactly (math.fsum), so the result depends on neither the order
    nor the split of the examples over ranks."""
    both = D.all_gather_cat(torch.stack([values.to(torch.float64), counts.to(torch.float64)], 1))
    return math.fsum(both[:, 0].tolist()) / max(math.fsum(both[:, 1].tolist()), 1.0)


def make_loss_fn(model, enc, train, stream: BatchStream, kind: str = "classification", batch_shape: bool = False):
    """loss_fn(step) -> mean loss over the global batch (all micro-batches, all ranks), per
    sample or, for "lm", per gold token; the same bits on every rank and at every world size.

    batch_shape: every forward of a micro-batch is padded to the shape of the whole global
    micro-batch (mezo.scoring.forward_shape), and loss_fn.pair(step) -> (L+, L-) scores each
    micro-batch of this rank in one forward of [rows; rows] (the stochastic numerics' dual
    forward: the engine perturbs the first half with +eps, the second with -eps); each half's
    per-example losses are summed exactly as loss_fn's, so both give the same bits per half; and
    loss_fn.batched(step) -> loss_fn(step) from one forward of this rank's micro-batch (a
    perturbation, which the engine generates once per forward, is then generated once, not once
    per forward of `forward_batch_size` examples)."""
    def shape(step: int, micro: int):
        return forward_shape(enc, [train[i] for i in stream.global_batch(step, micro)], kind) if batch_shape else None

    def scored(step: int, whole: bool) -> float:
        values, counts = [], []
        for micro in range(stream.accum):
            sh = shape(step, micro)
            forwards = [stream.local_batch(step, micro)] if whole else stream.local_forwards(step, micro)
            for ids in forwards:
                v, c = example_losses(model, enc, [train[i] for i in ids], kind, sh)
                values.append(v.detach().to("cpu", torch.float64))
                counts.extend(c)
        return global_mean(torch.cat(values), torch.tensor(counts, dtype=torch.float64))

    def loss_fn(step: int) -> float:
        return scored(step, whole=False)

    def pair(step: int) -> tuple[float, float]:
        plus, minus, counts = [], [], []
        for micro in range(stream.accum):
            mine = [train[i] for i in stream.local_batch(step, micro)]
            v, c = example_losses(model, enc, mine + mine, kind, shape(step, micro))
            v = v.detach().to("cpu", torch.float64)
            plus.append(v[:len(mine)])
            minus.append(v[len(mine):])
            counts.extend(c[:len(mine)])
        n = torch.tensor(counts, dtype=torch.float64)
        return global_mean(torch.cat(plus), n), global_mean(torch.cat(minus), n)

    loss_fn.pair, loss_fn.batched = pair, lambda step: scored(step, whole=True)
    return loss_fn
