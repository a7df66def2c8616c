"""Resumable trainer checkpoints (safetensors + JSON, no pickle) and the resume-or-init step of the scripts.

checkpoint/state_<step>.safetensors holds the SAE, optimizer tensors and the torch RNG state;
checkpoint/state.json the step, data position, optimizer param groups and the tensor file's name. The JSON
is replaced atomically after the tensors are on disk, so a crash at any point leaves a loadable pair.
"""
import json
import os

import torch
from safetensors.torch import load_file, save_file

from models.sae import save_atomic
from training.config import UserError
from training.ddp import broadcast_params


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


# constants added after runs were saved, with the value every run saved before them had: a saved config
# without the key reads as that value (so an old run resumes when asked for it, and is refused otherwise)
INTRODUCED = {"token_weight": False}


def check_resume_config(saved, config, path):
    older = {k: v for k, v in INTRODUCED.items() if k in config and k not in saved}
    saved = {**older, **saved}
    changed = sorted(k for k in set(saved) | set(config)
                     if k not in RESUMABLE_CHANGES and saved.get(k) != config.get(k))
    if changed:
        diff = ", ".join(f"{k}: {saved.get(k)!r}{' (saved before the constant existed)' * (k in older)} -> "
                         f"{config.get(k)!r}" for k in changed)
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
    if len(meta["param_groups"]) != len(optimizer.param_groups):   # relu gained a group for b_enc (RELU_BENC_LR_SCALE)
        raise UserError(f"{os.path.join(ckpt_dir, 'state.json')}: saved with {len(meta['param_groups'])} optimizer "
                        f"parameter group(s), this code trains the SAE with {len(optimizer.param_groups)} (relu's "
                        f"encoder biases step RELU_BENC_LR_SCALE x the lr since models/sae.py gained it); nothing "
                        f"was changed in the run folder: resume with the code it was saved with, or pass "
                        f"--run_name=<new name> for a new run")
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    torch.set_rng_state(tensors["rng.torch"])
    return meta


class Checkpoints:
    """The run's checkpoint/ folder: resume-or-init before the loop, save() in it (rank 0 writes)."""

    def __init__(self, run, sae, *, optimizer, config, batch_size, tokens_per_pair):
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
