"""Multi-process training with torchrun: gloo on CPU, nccl on GPU.

    torchrun --nproc_per_node=N -m vhred.train --config configs/dailydialog.yaml

Every rank holds the whole model (DistributedDataParallel) and takes its share of each batch;
only rank 0 writes logs and checkpoints. Without torchrun (WORLD_SIZE unset) all of this is a
no-op and training runs in one process.
"""
import importlib
import os

import torch
import torch.distributed as dist

from .errors import UserError


def setup(device: torch.device) -> tuple[int, int, torch.device]:
    """(rank, world size, this rank's device); starts the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        # data-parallel imports torch._dynamo, whose import, made while a group exists, keeps
        # references to it: destroy_process_group then leaves gloo's threads running into the
        # interpreter's exit, where they sometimes abort the process ("terminate called without
        # an active exception"). Imported first, it takes none.
        importlib.import_module("torch._dynamo")
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def sum_all(values: torch.Tensor, host: list) -> list[float]:
    """Sum a small device tensor and a few host numbers over all ranks: the device values then
    the host ones, as floats. One device-to-host copy (and one all-reduce under torchrun); the
    host numbers join the device tensor only when there is something to reduce."""
    if not dist.is_initialized():
        return values.double().tolist() + [float(x) for x in host]
    t = torch.cat([values.double(), to_device(torch.tensor(host, dtype=torch.float64), values.device)])
    dist.all_reduce(t)
    return t.tolist()


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor to the device without waiting: pinned first on a GPU (a copy from pageable
    memory blocks the host until it is done)."""
    if device.type == "cuda":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


def all_reduce_(t: torch.Tensor) -> None:
    """Sum t over all ranks, in place (nothing to do in one process)."""
    if dist.is_initialized():
        dist.all_reduce(t)


def average_norm_stats_(model: torch.nn.Module) -> None:
    """Average the running statistics of the model's batch norms (DialogWAE's generators) over
    all ranks, in place, after a step: each rank updates them from its own share of the batch and
    data-parallel sends no buffers (train.py), so the ranks would otherwise validate and sample
    with statistics of their own, and a resumed run (rank 0's, restored on every rank) would part
    from an uninterrupted one. The momentum update is linear in the batch mean, so the average
    is the running mean of the whole batch's means (and the variances' mean for the variance)."""
    if not dist.is_initialized():
        return
    stats = [t for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
             and m.track_running_stats for t in (m.running_mean, m.running_var)]
    if not stats:
        return
    flat = torch.cat([t.flatten() for t in stats])
    dist.all_reduce(flat)
    flat.div_(dist.get_world_size())
    for t, avg in zip(stats, flat.split([t.numel() for t in stats])):
        t.copy_(avg.view_as(t))


def gather_objects(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank; [obj] in one process."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def run_on_rank0(fn):
    """fn() on rank 0 while the others wait; its result there, None on the others. When fn fails,
    the others exit quietly with the code rank 0 will (2 for a user's mistake, else 1), rather
    than each print a traceback of the connection rank 0 closed as it exited."""
    if not dist.is_initialized():
        return fn()
    outcome, result = [0], None
    if dist.get_rank() == 0:
        try:
            result = fn()
        except BaseException as e:
            outcome = [2 if isinstance(e, UserError) else 1]
            try:
                dist.broadcast_object_list(outcome, src=0)
            except RuntimeError:   # the peers left already (a stop reached them too): this error stands
                pass
            raise
    dist.broadcast_object_list(outcome, src=0)
    if outcome[0]:
        raise SystemExit(outcome[0])
    return result


def peer_gone(e: BaseException) -> bool:
    """Whether e is a collective failing because another process of the run has exited (its
    own error, printed by it, is the one to read): gloo's and NCCL's words for a closed peer."""
    return isinstance(e, RuntimeError) and any(
        words in str(e) for words in ("Connection closed by peer", "Connection reset by peer", "Broken pipe"))


def barrier():
    if dist.is_initialized():
        dist.barrier()


def cleanup():
    if dist.is_initialized():
        dist.destroy_process_group()
