"""One SAE optimizer step and its learning-rate schedule, shared by both training scripts.

Why the step is one call and not written out in each script's loop (as nanoGPT and DINO keep theirs):
our step is a dozen lines whose order matters (gradients all-reduced over ranks before the gradient
along the unit-norm decoder rows is removed, that before clipping, the rows re-normalised after the
Adam step, dead-latent counts last, a collective under DDP). Two copies that drift apart would train
two different SAEs, and bench/bench_pipeline.py and bench/bench_sae.py time this very function. The
scripts' loops still show everything around it (LR, logging, evaluation, checkpoints).
"""
import torch

from training.ddp import all_reduce_grads


def lr_at(step, total_steps, *, lr, warmup_steps, decay_frac):
    """Linear warm-up, constant, linear decay to 0 over the last decay_frac of training (SAELens docs,
    saev / sparsify warm-up)."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    decay_start = int(total_steps * (1 - decay_frac))
    if decay_frac > 0 and step >= decay_start:
        return lr * max(0.0, (total_steps - step) / max(1, total_steps - decay_start))
    return lr


def sae_step(sae, optimizer, *, x, lr, grad_clip, world_size, bf16=False):
    """Forward, backward, all-reduce, constraint maintenance, step; returns the SAEOutput.
    bf16: autocast the SAE's matmuls (fp32 weights and optimizer; sparsify measures ~2x on GPU)."""
    for group in optimizer.param_groups:   # lr_scale: SAE.param_groups (relu's encoder biases)
        group["lr"] = lr * group.get("lr_scale", 1.0)
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        out = sae(x)
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    all_reduce_grads(list(sae.parameters()), world_size)
    sae.remove_parallel_grad()  # decoder rows stay unit-norm: no gradient along them (openai, sparsify)
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(sae.parameters(), grad_clip)
    optimizer.step()
    sae.normalize_decoder()
    sae.update_dead_stats(out.fired, len(x))  # a collective under DDP: counts the global batch on every rank
    return out
