"""Process group set-up and the few collectives the loop needs (works for python, torchrun and
accelerate launch: all three set, or leave unset, RANK / WORLD_SIZE / LOCAL_RANK)."""
from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist


def launched_distributed() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def init() -> torch.device:
    """Start the process group when launched by torchrun/accelerate (nccl on GPU, gloo on CPU)."""
    dev = device()
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if launched_distributed() and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return dev


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (a no-op on one process). Returns a tensor on t's device."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        on = device() if dist.get_backend() == "nccl" else t.device
        x = t.to(on)
        dist.all_reduce(x)
        return x.to(t.device)
    return t


def all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Every rank's `t` (same shape on each) concatenated along dim 0 in rank order (a no-op on
    one process). Returns a tensor on t's device."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        on = device() if dist.get_backend() == "nccl" else t.device
        parts = [torch.empty_like(t, device=on) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, t.to(on).contiguous())
        return torch.cat(parts).to(t.device)
    return t


def all_gather_objects(obj) -> list:
    """Every rank's picklable `obj`, in rank order ([obj] on one process)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        out = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
    return [obj]


def sync_counts(finished: int, batch: int) -> tuple[int, int]:
    """(finished, batch) summed over ranks: keeps generation loops of all ranks in lockstep."""
    t = all_reduce_sum(torch.tensor([finished, batch], dtype=torch.float64))
    return int(t[0]), int(t[1])


def barrier():
    if dist.is_initialized():
        dist.barrier()


def shutdown(clean: bool = False):
    """Tear down the process group. After a successful run, wait for every rank first: a rank
    that destroys its group while a peer still talks to it can abort at exit (gloo)."""
    if dist.is_initialized():
        if clean:
            dist.barrier()
        dist.destroy_process_group()


def exit_process(code: int) -> None:
    """Exit a torchrun worker without running C++ static destructors: with gloo, a background
    thread still joinable at interpreter teardown aborts the process ("terminate called without
    an active exception", exit -6) after all work is done, and torchrun then fails the job.
    Everything is written and flushed by now (JSON outputs are atomic), so skip the teardown."""
    import logging
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
