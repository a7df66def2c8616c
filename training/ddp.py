"""DDP for the training scripts: torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; gloo on CPU, nccl on CUDA.
The SAE is not wrapped in DistributedDataParallel: its gradients are averaged by one flat all-reduce
(all_reduce_grads), and the few cross-rank decisions (stop on a signal, initial weights) are explicit.
"""
import os

import torch
import torch.distributed as dist

from training.config import UserError


def pick_device(name):
    """'auto' -> cuda when torch sees a GPU, else cpu; 'cuda...' without a GPU is a user error (before any model
    is loaded), as is a name torch does not know."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"device={name!r}: expected 'auto', 'cpu', 'cuda' or 'cuda:<index>'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device={name!r}: no CUDA GPU is visible to torch (torch.cuda.is_available() is False); "
                        f"use --device=cpu, or --device=auto to take a GPU when there is one")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UserError(f"device={name!r}: only {torch.cuda.device_count()} GPU(s) visible")
    return device


def setup_ddp(device_name):
    """-> (rank, world_size, device). Initialises the process group when launched by torchrun."""
    device = pick_device(device_name)  # a user error when 'cuda' is asked for and there is no GPU
    if "RANK" not in os.environ:
        return 0, 1, device
    local_rank = int(os.environ["LOCAL_RANK"])
    use_cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if use_cuda else "gloo")
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    return dist.get_rank(), dist.get_world_size(), device


def cleanup_ddp():
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def any_rank(flag, world_size, device):
    """True when `flag` is set on any rank (a collective under DDP, so all ranks stop at the same step)."""
    if world_size == 1:
        return bool(flag)
    t = torch.tensor([int(bool(flag))], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def all_reduce_grads(params, world_size):
    """Average gradients over ranks in one flat all-reduce (what DDP does, without wrapping the SAE)."""
    if world_size == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def broadcast_params(module):
    """Make every rank start from rank 0's weights and buffers."""
    if dist.is_initialized():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, 0)
