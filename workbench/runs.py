"""Run bookkeeping shared by both training scripts: run folder, log, metrics.jsonl, seeding, the
git/version header, the LR schedule, DDP set-up and gradient all-reduce, resumable checkpoints
(safetensors + JSON, no pickle), the training-curves figure, and the training loop's pieces:
`sae_step` (one optimizer step), `TrainProgress` (progress bar + train records), `log_eval`,
`Checkpoints` (resume-or-init, save), `GracefulStop` (Ctrl-C / SIGTERM) and `log_data_summary`.

A run folder `results/<run>/` holds: config.yaml (resolved), log.txt (header: git commit + dirty flag,
versions, device, command, config, then the script's source, as modded-nanogpt/airbench do),
metrics.jsonl (one JSON object per train log / eval, and a 'data' record with the unreadable-pair counts
at the end of every invocation), sae.safetensors + sae_config.json (models/sae.py), curves.png and
checkpoint/ (trainer state for resume).
"""
import json
import math
import os
import platform
import random
import signal
import subprocess
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
import yaml
from safetensors.torch import load_file, save_file

from models.sae import save_atomic
from workbench.config import UserError, resolve_device


# ------------------------------------------------------------------------------------------------
# run folder, log, metrics

def git_state(repo_dir="."):
    """(commit, dirty) of the repo at repo_dir; ('none', True) outside git or before the first commit."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=repo_dir, capture_output=True, text=True)
    head = git("rev-parse", "HEAD")
    commit = head.stdout.strip() if head.returncode == 0 else "none"
    status = git("status", "--porcelain")  # untracked, non-ignored files (e.g. a new script) count as dirty
    return commit, commit == "none" or status.returncode != 0 or bool(status.stdout.strip())


def describe_device(device):
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda})"
    cpu = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        names = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")]
        cpu = f"{names[0]} x{len(names)}" if names else cpu
    return f"{device} ({cpu}, {torch.get_num_threads()} threads)"


class Run:
    """The run folder and its log. Only rank 0 writes; other ranks get a Run whose methods do nothing.

    Nothing is written before `begin()`, which the scripts call once the run is known to be valid (config
    checked against the checkpoint, model, hook and datasets resolved): until then log lines are only
    printed and kept, so a refused or failed start leaves an existing run folder exactly as it was and
    creates no folder at all."""

    def __init__(self, run_dir, active=True):
        self.dir, self.active = run_dir, active
        self.started, self._pending, self._header = False, [], None

    def log(self, msg):
        if not self.active:
            return
        from tqdm import tqdm
        tqdm.write(msg)  # keeps an active progress bar intact
        if not self.started:
            self._pending.append(msg)
            return
        with open(os.path.join(self.dir, "log.txt"), "a") as f:
            f.write(msg + "\n")

    def begin(self, step):
        """Create the folder, write config.yaml and the log header (plus the lines logged so far), and cut
        metrics.jsonl back to the records of steps <= `step` (the checkpoint resumed from; 0 for a fresh start),
        so a run resumed after a kill has no duplicate rows."""
        if not self.active:
            return
        os.makedirs(self.dir, exist_ok=True)
        self.started = True
        if self._header:
            self._write_header(*self._header)
        for msg in self._pending:
            with open(os.path.join(self.dir, "log.txt"), "a") as f:
                f.write(msg + "\n")
        self._pending = []
        path = os.path.join(self.dir, "metrics.jsonl")
        if os.path.exists(path):
            with open(path) as f:  # a line cut by a kill -9 is dropped; so are records after the checkpoint
                lines = [line for line in f if line.endswith("\n") and _step_of(line) <= step]
            with open(path + ".tmp", "w") as f:
                f.writelines(lines)
            os.replace(path + ".tmp", path)

    def header(self, config, device, script_path, world_size=1):
        """Remember what begin() writes: the first lines of log.txt (appended again on resume) and config.yaml."""
        self._header = (config, device, script_path, world_size)

    def _write_header(self, config, device, script_path, world_size):
        commit, dirty = git_state(os.path.dirname(os.path.abspath(script_path)))
        import numpy, safetensors
        lines = [f"git commit: {commit}  dirty: {dirty}  ({time.strftime('%Y-%m-%d %H:%M:%S %Z')})",
                 f"python {platform.python_version()}  torch {torch.__version__}  numpy {numpy.__version__}  "
                 f"safetensors {safetensors.__version__}",
                 f"device: {describe_device(device)}  world_size: {world_size}  host: {platform.node()}",
                 "command: " + " ".join([os.path.basename(sys.executable)] + sys.argv),
                 "config: " + json.dumps(config)]
        with open(os.path.join(self.dir, "config.yaml.tmp"), "w") as f:
            yaml.safe_dump(config, f, sort_keys=False)
        os.replace(os.path.join(self.dir, "config.yaml.tmp"), os.path.join(self.dir, "config.yaml"))
        with open(script_path) as f:
            source = f.read()
        with open(os.path.join(self.dir, "log.txt"), "a") as f:
            name = os.path.basename(script_path)
            f.write("\n".join(lines) + f"\n---- source of {name} ----\n{source}---- end of source ----\n")
        print("\n".join(lines[:4]))

    def metrics(self, record):
        """Append one JSON object to metrics.jsonl (floats, ints, lists and strings only)."""
        if self.active:
            assert self.started, "metrics before Run.begin()"
            with open(os.path.join(self.dir, "metrics.jsonl"), "a") as f:
                f.write(json.dumps(record) + "\n")


def _step_of(line):
    try:
        return json.loads(line).get("step", 0)
    except json.JSONDecodeError:
        return math.inf  # a garbled line is dropped


def start_run(run_dir, config, device_name, seed, script_path):
    """-> (run, rank, world_size, device): the device (a missing GPU is a user error), DDP set-up (under
    torchrun), the seed, and a Run that writes nothing until run.begin(). A checkpoint of this run with a
    different config is refused here, before any model is loaded."""
    state = os.path.join(run_dir, "checkpoint", "state.json")
    if os.path.exists(state):
        check_resume_config(read_state(state)["config"], config, os.path.dirname(state))
    rank, world_size, device = setup_ddp(device_name)
    run = Run(run_dir, active=rank == 0)
    seed_everything(seed)
    run.header(config, device, script_path, world_size)
    return run, rank, world_size, device


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def lr_at(step, total_steps, lr, warmup_steps, decay_frac):
    """Linear warm-up, constant, linear decay to 0 over the last decay_frac of training (SAELens docs,
    saev / sparsify warm-up)."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    decay_start = int(total_steps * (1 - decay_frac))
    if decay_frac > 0 and step >= decay_start:
        return lr * max(0.0, (total_steps - step) / max(1, total_steps - decay_start))
    return lr


# ------------------------------------------------------------------------------------------------
# DDP: torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; gloo on CPU, nccl on CUDA

def setup_ddp(device_name):
    """-> (rank, world_size, device). Initialises the process group when launched by torchrun."""
    device = resolve_device(device_name)  # a user error when 'cuda' is asked for and there is no GPU
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


# ------------------------------------------------------------------------------------------------
# resumable trainer checkpoints: checkpoint/state_<step>.safetensors (SAE + optimizer tensors + RNG)
# and checkpoint/state.json (step, data position, optimizer param groups, file name). The JSON is
# replaced atomically after the tensors are on disk, so a crash at any point leaves a loadable pair.

def save_checkpoint(ckpt_dir, sae, optimizer, state):
    os.makedirs(ckpt_dir, exist_ok=True)
    tensors = {f"sae.{k}": v.detach().cpu().contiguous() for k, v in sae.state_dict().items()}
    opt = optimizer.state_dict()
    for idx, slots in opt["state"].items():
        for name, v in slots.items():
            tensors[f"optim.{idx}.{name}"] = torch.as_tensor(v).cpu().contiguous()
    tensors["rng.torch"] = torch.get_rng_state()
    fname = f"state_{state['step']:08d}.safetensors"
    save_atomic(os.path.join(ckpt_dir, fname), lambda tmp: save_file(tensors, str(tmp)))
    meta = {**state, "tensors": fname, "param_groups": opt["param_groups"]}
    with open(os.path.join(ckpt_dir, "state.json.tmp"), "w") as f:
        json.dump(meta, f, indent=1)
    os.replace(os.path.join(ckpt_dir, "state.json.tmp"), os.path.join(ckpt_dir, "state.json"))
    for old in os.listdir(ckpt_dir):  # older tensor files are no longer referenced
        if old.startswith("state_") and old != fname:
            os.remove(os.path.join(ckpt_dir, old))


# settings a resumed run may change: they do not touch the SAE, its data or its schedule
RESUMABLE_CHANGES = ("max_steps", "num_workers", "device", "eval_every", "eval_pairs", "fidelity", "log_every",
                     "ckpt_every", "dust3r_batch", "cache_dir")


def check_resume_config(saved, config, path):
    changed = sorted(k for k in set(saved) | set(config)
                     if k not in RESUMABLE_CHANGES and saved.get(k) != config.get(k))
    if changed:
        diff = ", ".join(f"{k}: {saved.get(k)!r} -> {config.get(k)!r}" for k in changed)
        raise UserError(f"{path}: cannot resume with a different config ({diff}); nothing was changed in the run "
                        f"folder. Rerun with the saved values, or pass --run_name=<new name> for a new run")


def read_state(path):
    """checkpoint/state.json, with a clear error when it is not valid JSON."""
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e}); the checkpoint is damaged: restore it, or delete the "
                        f"checkpoint/ folder to start the run again") from None


def load_checkpoint(ckpt_dir, sae, optimizer, device):
    """Restore SAE, optimizer and torch RNG in place; return the JSON state (step, data position, ...)."""
    meta = read_state(os.path.join(ckpt_dir, "state.json"))
    path = os.path.join(ckpt_dir, meta["tensors"])
    try:
        tensors = load_file(path)
    except Exception as e:  # noqa: BLE001 - safetensors raises its own types for truncated/corrupt files
        raise UserError(f"{path}: cannot read the checkpoint tensors ({type(e).__name__}: {e}); the file is "
                        f"damaged: restore it, or delete the checkpoint/ folder to start the run again") from None
    sae.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("sae.")})
    state = {}
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = v if name == "step" else v.to(device)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    torch.set_rng_state(tensors["rng.torch"])
    return meta


# ------------------------------------------------------------------------------------------------
# training-curves figure, from metrics.jsonl alone (so it can be redrawn for any run)

def plot_curves(run_dir, title=""):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f if line.strip()]
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    fig, axes = plt.subplots(2, 3, figsize=(14, 7.5))

    def curve(ax, rows, key, label, **kw):
        pts = [(r["tokens"], r[key]) for r in rows if r.get(key) is not None]
        if pts:  # a lone point (short runs log once) still shows: marker unless the caller chose one
            ax.plot(*zip(*pts), label=label, **({"marker": ".", **kw} if len(pts) == 1 else kw))

    ax = axes[0, 0]
    curve(ax, train, "loss", "train loss")
    curve(ax, train, "recon_mse", "train recon mse (normalised space)")
    ax.set_yscale("log"), ax.set_title("training loss")
    ax = axes[0, 1]
    curve(ax, evals, "fvu", "eval FVU", marker="o")
    ax.set_title("FVU (held-out, centred)")
    ax = axes[0, 2]
    curve(ax, train, "l0", "train L0")
    curve(ax, evals, "l0", "eval L0", marker="o")
    ax.set_title("L0 (active latents per token)")
    ax = axes[1, 0]
    curve(ax, evals, "dead_frac", "dead (training window)", marker="o")
    curve(ax, evals, "dense_frac", "dense (> 1% of tokens)", marker="o")
    ax.set_title("dead / dense latents (fraction)")
    ax = axes[1, 1]
    curve(ax, evals, "score_vs_clean", "vs clean output", marker="o")
    curve(ax, evals, "score_vs_gt", "vs ground truth", marker="o")
    ax.set_title("spliced fidelity (1 = clean, 0 = mean-ablated)")
    for ax in axes.flat[:5]:
        if ax.get_legend_handles_labels()[0]:  # no curves (e.g. fidelity=False): no empty-legend warning
            ax.legend(fontsize=8)
    ax = axes[1, 2]
    if evals:
        edges, counts = evals[-1]["density_edges"], evals[-1]["density_counts"]
        ax.stairs(counts, edges)
        ax.set_xlabel("log10 firing frequency (last eval; never-firing at the left edge)")
    ax.set_title("feature density")
    for ax in axes.flat[:5]:
        ax.set_xlabel("training tokens")
        ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 3))  # 4e7, not 40000000 run together
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(os.path.join(run_dir, "curves.png"), dpi=100)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------
# one optimizer step, identical in both scripts

def sae_step(sae, optimizer, x, lr, grad_clip, world_size, bf16=False):
    """Forward, backward, all-reduce, constraint maintenance, step; returns the SAEOutput.
    bf16: autocast the SAE's matmuls (fp32 weights and optimizer; sparsify measures ~2x on GPU)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
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
    sae.update_dead_stats(out.latents)  # a collective under DDP: counts the global batch on every rank
    return out


# ------------------------------------------------------------------------------------------------
# the training loop's pieces: progress and train records, eval records, checkpoints, signals, data

class TrainProgress:
    """Rank 0's progress bar and the 'train' records of metrics.jsonl (tokens/s since the previous record).
    branches: with a pooled SAE (both decoder branches), also the batch's L0 per branch."""

    def __init__(self, run, step, total_steps, batch_size, branches=()):
        from tqdm import tqdm
        self.run, self.batch_size, self.branches = run, batch_size, tuple(branches)
        self.pbar = tqdm(total=total_steps, initial=step, disable=not run.active, desc=os.path.basename(run.dir),
                         dynamic_ncols=True)
        self.t0 = self.t_last = time.time()
        self.step_last = step

    def update(self, step, out, optimizer, branch=None, record=False):
        """Advance the bar to `step`; with record=True also append a 'train' record of this step's batch."""
        self.pbar.update(1)
        if not record:
            return
        rate = (step - self.step_last) * self.batch_size / (time.time() - self.t_last)
        self.t_last, self.step_last = time.time(), step
        rec = dict(kind="train", step=step, tokens=step * self.batch_size, loss=out.loss.item(),
                   recon_mse=out.recon_mse.item(), aux_loss=out.aux_loss.item(), l0=out.l0, fvu=out.fvu,
                   lr=optimizer.param_groups[0]["lr"], tokens_per_s=rate)
        rec.update({f"l0_branch{v}": (out.latents[branch == v] != 0).sum(1).float().mean().item()
                    for v in self.branches})  # this rank's batch
        self.run.metrics(rec)
        self.pbar.set_postfix(fvu=f"{out.fvu:.3f}", l0=f"{out.l0:.1f}", tok_s=f"{rate:.0f}")

    def close(self):
        self.pbar.close()

    def seconds(self):
        """Wall time since the loop started."""
        return time.time() - self.t0


def log_eval(run, step, tokens, m):
    """An 'eval' record (workbench/evaluate.py's metrics) in metrics.jsonl and a line in log.txt."""
    run.metrics(dict(kind="eval", step=step, tokens=tokens, **m))
    run.log(f"step {step}: eval fvu {m['fvu']:.4f} l0 {m['l0']:.1f} dead {m['dead_frac']:.3f} "
            f"dense {m['dense_frac']:.3f} score_vs_clean {m.get('score_vs_clean', float('nan')):.3f} "
            f"score_vs_gt {m.get('score_vs_gt', float('nan')):.3f}")


class Checkpoints:
    """The run's checkpoint/ folder: resume-or-init before the loop, save() in it (rank 0 writes)."""

    def __init__(self, run, sae, optimizer, config, batch_size, tokens_per_pair):
        self.run, self.sae, self.optimizer, self.config = run, sae, optimizer, config
        self.dir = os.path.join(run.dir, "checkpoint")
        self.batch_size, self.tokens_per_pair = batch_size, tokens_per_pair

    def resume_or_init(self, device, init_sample):
        """-> the step to start at: restore checkpoint/ when there is one (a changed config is refused), else
        initialise the SAE from init_sample() (normalisation, b_dec); then every rank takes rank 0's weights."""
        step = 0
        if os.path.exists(os.path.join(self.dir, "state.json")):
            state = load_checkpoint(self.dir, self.sae, self.optimizer, device)
            check_resume_config(state["config"], self.config, self.dir)
            step = state["step"]
            self.run.log(f"resumed {self.run.dir} at step {step}")
        else:
            self.sae.init_from_sample(init_sample())
        broadcast_params(self.sae)
        return step

    def save(self, step):
        if self.run.active:
            save_checkpoint(self.dir, self.sae, self.optimizer, {
                "step": step, "tokens": step * self.batch_size, "pairs": step * self.batch_size / self.tokens_per_pair,
                "config": self.config})


class GracefulStop:
    """Ctrl-C or SIGTERM (preemption) sets a flag the loop checks between steps, so the step finishes and a
    checkpoint is written; a second signal aborts at once."""

    def __init__(self):
        self.signals = []
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)

    def _on_signal(self, signum, frame):
        self.signals.append(signum)
        if len(self.signals) > 1:
            raise KeyboardInterrupt

    def requested(self, world_size, device):
        """True on every rank once any rank got a signal (a collective under DDP)."""
        return any_rank(self.signals, world_size, device)

    def checkpoint_and_exit(self, run, ckpt, step):
        """After the loop stopped early for a signal: checkpoint at this step, exit with status 130."""
        ckpt.save(step)
        run.log(f"stopped by a signal at step {step}: checkpoint saved; rerun the same command to resume")
        sys.exit(130)


def log_data_summary(run, step, world_size, device, **datasets):
    """End of an invocation: each dataset's summary() in log.txt, and its bad-item count (pairs this
    invocation skipped for an unreadable file; the union over DDP ranks) in a 'data' record of metrics.jsonl."""
    rec = dict(kind="data", step=step)
    for name, ds in datasets.items():
        summary = ds.summary()
        if world_size > 1:  # each rank read its own pairs: union of the ranks' bad-pair masks
            mask = ds.bad_mask().to(device, torch.int32)
            dist.all_reduce(mask, op=dist.ReduceOp.MAX)
            n_bad = int(mask.sum())
            summary.update(bad_items=n_bad, bad_fraction=n_bad / max(len(ds), 1))
        run.log(f"data {name}: " + json.dumps(summary))
        rec.update({f"{name}_pairs": len(ds), f"{name}_bad_items": summary["bad_items"]})
    run.metrics(rec)
