"""mezo.batches: the forwards of a step do not depend on the number of ranks, and the loss is
summed exactly."""
import math

import pytest
import torch

from mezo import batches
from mezo.batches import BatchStream, forward_batch_size, global_mean, rank_batches


def _as_rank(monkeypatch, rank: int, world: int):
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world))


@pytest.mark.parametrize("batch", [8, 16])
def test_forwards_are_the_same_on_1_2_and_4_ranks(monkeypatch, batch):
    def forwards(world):
        out = []
        for r in range(world):
            _as_rank(monkeypatch, r, world)
            s = BatchStream(100, batch, 2, seed=5, forward=forward_batch_size("auto", batch, world, "cpu"))
            out.append([f for step in range(3) for m in range(2) for f in s.local_forwards(step, m)])
        # rank r's forwards of each (step, micro) follow rank r-1's: interleave back to global order
        per = len(out[0]) // 6
        return [f for k in range(6) for r in range(world) for f in out[r][k * per:(k + 1) * per]]
    one = forwards(1)
    assert all(len(f) == {8: 2, 16: 4}[batch] for f in one)
    assert forwards(2) == one and forwards(4) == one


def test_forward_batch_size_rules():
    # CPU: the largest of 4 and 2 dividing the per-process batch on 1, 2 and 4 processes and on this run's
    assert [forward_batch_size("auto", 16, w, "cpu") for w in (1, 2, 4)] == [4, 4, 4]
    assert [forward_batch_size("auto", 8, w, "cpu") for w in (1, 2, 4)] == [2, 2, 2]
    assert forward_batch_size("auto", 16, 8, "cpu") == 2       # 8 processes: 2 each
    assert forward_batch_size("auto", 12, 1, "cpu") == 2       # 3 on 4 processes: no common size; 2 here
    assert forward_batch_size("auto", 7, 1, "cpu") == 1        # an odd share: one example per forward
    assert forward_batch_size("auto", 16, 2, "cuda") == 8     # GPU: the whole per-rank share
    assert forward_batch_size("4", 16, 2, "cpu") == 4
    with pytest.raises(ValueError, match="does not divide the per-process batch"):
        forward_batch_size("3", 16, 2, "cpu")
    for bad in ("-1", "0", "two", "2.5"):
        with pytest.raises(ValueError, match="must be a positive integer or 'auto'"):
            forward_batch_size(bad, 16, 1, "cpu")


def test_rank_batches_cut_at_fixed_places_and_pad(monkeypatch):
    order = list(range(10))
    _as_rank(monkeypatch, 0, 1)
    assert rank_batches(order, 4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    _as_rank(monkeypatch, 0, 2)
    assert rank_batches(order, 4) == [[0, 1, 2, 3], [8, 9]]
    _as_rank(monkeypatch, 1, 2)
    assert rank_batches(order, 4) == [[4, 5, 6, 7], []]       # padded: every rank runs 2 forwards


def test_global_mean_is_exact_whatever_the_order():
    # values whose float sum depends on the order: naive summation loses the small terms
    vals = [1e16, 1.0, -1e16, 1.0] * 4
    counts = torch.ones(len(vals), dtype=torch.float64)
    exact = math.fsum(vals) / len(vals)
    assert global_mean(torch.tensor(vals, dtype=torch.float64), counts) == exact == 0.5
    assert global_mean(torch.tensor(vals[::-1], dtype=torch.float64), counts) == exact
    assert sum(vals) / len(vals) != exact  # what a plain sum would have given
