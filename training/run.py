"""The run folder and its bookkeeping, shared by both training scripts: log.txt with the git/version
header, metrics.jsonl, config.yaml, seeding, the progress bar with its 'train' records, Ctrl-C / SIGTERM
handling, and the data summary at the end of an invocation.

A run folder `results/<run>/` holds: config.yaml (resolved), log.txt (header: git commit + dirty flag,
versions, device, command, config, then the script's source, as modded-nanogpt/airbench do),
metrics.jsonl (one JSON object per train log / eval, and a 'data' record with the unreadable-pair counts
at the end of every invocation), sae.safetensors + sae_config.json (models/sae.py), curves.png
(training/curves.py) and checkpoint/ (training/checkpoint.py).
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

from training.checkpoint import check_resume_config, read_state
from training.ddp import any_rank, setup_ddp


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
        with open(os.path.join(self.dir, "log.txt"), "a") as f:
            f.writelines(msg + "\n" for msg in self._pending)
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


class TrainProgress:
    """Rank 0's progress bar and the 'train' records of metrics.jsonl (tokens/s since the previous record).
    branches: with a pooled SAE (both decoder branches), also the batch's L0 per branch."""

    def __init__(self, run, step, *, total_steps, batch_size, branches=()):
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
