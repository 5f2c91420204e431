"""The one distributed helper every stage uses.

It reads torchrun's RANK / WORLD_SIZE / LOCAL_RANK (or SLURM's SLURM_PROCID / SLURM_NTASKS /
SLURM_LOCALID when launched with ``srun`` without torchrun), picks nccl on CUDA and gloo on CPU,
silences every rank but 0, seeds each process with ``seed + rank`` and offers exact sharded
evaluation: each rank takes ``indices[rank::world_size]`` (no padding, no duplicates) and results
are summed across ranks, never averaged.
"""

import builtins
import datetime
import os
import random

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.rendezvous import rendezvous

from utils.errors import UserError


def _env_int(*names):
    for name in names:
        if name in os.environ:
            return int(os.environ[name])
    return None


def resolve_device(requested, local_rank=0):
    """The torch.device to run on: ``auto`` means CUDA when present, else CPU.

    Under several processes on CUDA each takes the GPU of its local rank.
    """
    requested = (requested or "auto").lower()
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(requested)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError("--device asks for CUDA but no CUDA GPU is visible; use --device cpu or --device auto.")
        if device.index is None:
            device = torch.device(device.type, local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    return device


def init_distributed(device="auto", dist_url="env://", timeout_minutes=30):
    """Initialise the process group when launched by torchrun or SLURM; return the run's layout.

    Returns a dict with ``distributed``, ``rank``, ``world_size``, ``local_rank`` and ``device``.
    A plain ``python script.py`` gets world size 1 and no process group.
    """
    rank = _env_int("RANK", "SLURM_PROCID")
    world_size = _env_int("WORLD_SIZE", "SLURM_NTASKS")
    local_rank = _env_int("LOCAL_RANK", "SLURM_LOCALID") or 0
    if rank is None or world_size is None or world_size <= 1:
        resolved = resolve_device(device, local_rank)
        return {"distributed": False, "rank": 0, "world_size": 1, "local_rank": 0, "device": resolved}

    resolved = resolve_device(device, local_rank)
    backend = "nccl" if resolved.type == "cuda" else "gloo"
    if dist_url == "env://" and "MASTER_ADDR" not in os.environ:
        raise UserError(
            "a multi-process run needs MASTER_ADDR and MASTER_PORT; launch it with torchrun "
            "(or set them in the SLURM script, see README)."
        )
    timeout = datetime.timedelta(minutes=timeout_minutes)
    store, restart = None, os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if dist_url == "env://" and restart is not None:
        # torchrun keeps one key-value store across the restarts of a worker group (--max-restarts); the new
        # group would read the failed one's keys (gloo addresses, NCCL ids) and hang, so each attempt gets its own
        store = next(rendezvous(dist_url, rank, world_size, timeout=timeout))[0]
        store = dist.PrefixStore(f"attempt_{restart}/", store)
    dist.init_process_group(
        backend=backend,
        init_method=None if store else dist_url,
        store=store,
        world_size=world_size,
        rank=rank,
        timeout=timeout,
        device_id=resolved if resolved.type == "cuda" else None,
    )
    setup_for_distributed(rank == 0)
    return {"distributed": True, "rank": rank, "world_size": world_size, "local_rank": local_rank, "device": resolved}


def setup_for_distributed(is_master):
    """Make ``print`` a no-op on every rank but 0 (``print(..., force=True)`` still prints)."""
    builtin_print = builtins.print

    def print_(*args, **kwargs):
        force = kwargs.pop("force", False)
        if is_master or force:
            builtin_print(*args, **kwargs)

    builtins.print = print_


def is_dist():
    return dist.is_available() and dist.is_initialized()


def get_rank():
    return dist.get_rank() if is_dist() else 0


def get_world_size():
    return dist.get_world_size() if is_dist() else 1


def is_main_process():
    return get_rank() == 0


def barrier():
    if is_dist():
        dist.barrier()


def cleanup():
    if is_dist():
        dist.destroy_process_group()


def seed_everything(seed, rank=None):
    """Seed python, numpy and torch with ``seed + rank`` so ranks draw different augmentations."""
    seed = int(seed) + (get_rank() if rank is None else rank)
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return seed


def all_reduce_sum(tensor):
    """Sum a tensor over all ranks, in place, and return it (a no-op on one process).

    gloo and nccl both reduce on the tensor's own device; callers keep counts in float64 or int64
    so that the sums are exact.
    """
    if is_dist():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_buffers(model: torch.nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics), in place; a no-op on one process.

    DDP syncs buffers only at the start of a training forward, after which each rank updates its own with its
    local batch; evaluated as they are, the ranks' shards would be scored by slightly different networks,
    none of them the one rank 0 saves. Called before every evaluation, so the logged figures are the saved
    checkpoint's.
    """
    if is_dist():
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def all_gather_objects(obj):
    """A list with every rank's ``obj`` in rank order (``[obj]`` on one process)."""
    if not is_dist():
        return [obj]
    gathered = [None] * get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


class ShardSampler(torch.utils.data.Sampler):
    """Evaluation sampler: rank r takes indices r, r+W, r+2W, ... in order.

    Unlike DistributedSampler it never pads, so every sample is seen exactly once across ranks
    and the summed counts are exact for any dataset size.
    """

    def __init__(self, dataset_len, rank=None, world_size=None):
        self.rank = get_rank() if rank is None else rank
        self.world_size = get_world_size() if world_size is None else world_size
        self.indices = list(range(self.rank, dataset_len, self.world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


def wrap_ddp(model, device):
    """DistributedDataParallel around ``model`` in a multi-process run, the model itself otherwise."""
    if not is_dist():
        return model
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None
    )
