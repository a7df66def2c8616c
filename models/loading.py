"""Load DUSt3R checkpoints exactly as the official loader does, without eval and strictly.

`load_dust3r(source)` takes
  * an official `.pth` ({'model': state_dict, 'args': Namespace(model='AsymmetricCroCo3DStereo(...)')}):
    unpickled with torch's weights_only loader (tensors and argparse.Namespace only), the constructor string
    parsed with `ast` (never eval'd) after the two rewrites of the official load_model (dust3r/model.py);
  * a Hugging Face folder (config.json + model.safetensors), as naver's hub repos and save_pretrained write;
  * a hub id such as 'naver/DUSt3R_ViTLarge_BaseDecoder_512_dpt' (downloaded, or taken from the local cache);
  * 'random-tiny' / 'random-224': random weights drawn with `seed` (tests, CI, benchmarks; no download).
When a file, folder or hub id cannot be found, checkpoints/<name> and checkpoints/<name>.pth are tried
before giving up (machines without internet keep their weights there).
Both official routes yield the inference variant (PatchEmbedDust3R, landscape_only=False); pass
landscape_only=True for the training variant (ManyAR patch embedding + transposing heads), which our
datasets use because they deliver portrait images as transposed landscape tensors.
"""
from __future__ import annotations

import argparse
import ast
import json
import math
import os
import pickle
import re
import zipfile

import torch

from models.dust3r import AsymmetricCroCo3DStereo

OFFICIAL_MODELS = ("DUSt3R_ViTLarge_BaseDecoder_224_linear", "DUSt3R_ViTLarge_BaseDecoder_512_linear",
                   "DUSt3R_ViTLarge_BaseDecoder_512_dpt")
# every constructor argument an official config can carry (args.model keywords, HF config.json keys)
CONFIG_FIELDS = {"output_mode", "head_type", "depth_mode", "conf_mode", "freeze", "landscape_only",
                 "patch_embed_cls", "img_size", "patch_size", "mask_ratio", "enc_embed_dim", "enc_depth",
                 "enc_num_heads", "dec_embed_dim", "dec_depth", "dec_num_heads", "mlp_ratio", "norm_im2_in_dec",
                 "pos_embed"}
UNUSED_KEYS = ("mask_token",)  # CroCo's mask token: in every checkpoint, never read by DUSt3R's forward
# random-weight models: DUSt3R_ViTLarge_BaseDecoder_224_linear's architecture, and a tiny one for tests and CI
RANDOM_MODELS = {
    "random-224": dict(enc_embed_dim=1024, enc_depth=24, enc_num_heads=16, dec_embed_dim=768, dec_depth=12,
                       dec_num_heads=12, head_type="linear", pos_embed="RoPE100", img_size=(224, 224)),
    "random-tiny": dict(enc_embed_dim=32, enc_depth=2, enc_num_heads=2, dec_embed_dim=32, dec_depth=2,
                        dec_num_heads=2, head_type="linear", pos_embed="RoPE100")}
LOCAL_DIR = "checkpoints"  # offline fallback: checkpoints/<name> or checkpoints/<name>.pth (relative to the cwd)
_ALIAS = re.compile(r"^(.*\.dpt\.scratch\.)layer_rn\.([0-3])\.weight$")  # == ...layer{i+1}_rn.weight


def load_dust3r(source: str, device="cpu", *, landscape_only: bool = False, seed: int = 0,
                log=print) -> AsymmetricCroCo3DStereo:
    """Build DUSt3R from a .pth file, a Hugging Face folder, a hub id or 'random-tiny' / 'random-224' (random
    weights drawn with `seed`); frozen, in eval mode, on `device`. `log` reports an offline fallback."""
    source = os.fspath(source)
    if source in RANDOM_MODELS:  # the inference variant, as the official loader builds it
        config, state = dict(RANDOM_MODELS[source], patch_embed_cls="PatchEmbedDust3R", landscape_only=False), None
    else:
        try:
            config, state = _read(source)
        except FileNotFoundError as err:
            local = next((p for p in _local_copies(source) if os.path.exists(p)), None)
            if local is None:
                raise FileNotFoundError(f"{err}\n(also looked for {' and '.join(_local_copies(source))})") from None
            log(f"checkpoint {source} unreachable; using local copy {local}")
            (config, state), source = _read(local), local
    if landscape_only:
        config.update(patch_embed_cls="ManyAR_PatchEmbed", landscape_only=True)
    if state is None:
        with torch.random.fork_rng(devices=[]):  # the caller's RNG stream is left as it was
            torch.manual_seed(seed)
            model = from_config(config, source)
    else:
        model = load_state_dict_strict(from_config(config, source), state, source)
    model.eval().requires_grad_(False)
    return model.to(device)


def _read(source):
    """(config, state dict) of a .pth, a Hugging Face folder or a hub id."""
    if os.path.isfile(source):
        return _read_pth(source)
    if os.path.isdir(source):
        return _read_hf_folder(source)
    if re.fullmatch(r"[\w.-]+/[\w.-]+", source) and not source.startswith((".", "/")):
        return _read_hf_folder(_hub_folder(source))
    raise FileNotFoundError(f"{source}: no such file or folder (expected an official .pth, a folder with "
                            f"config.json + model.safetensors, or a hub id like naver/{OFFICIAL_MODELS[0]})")


def _local_copies(source):
    """Where a local copy of an unreachable source may lie: checkpoints/<name>, checkpoints/<name>.pth."""
    name = source.rstrip("/").split("/")[-1]
    return [os.path.join(LOCAL_DIR, name), os.path.join(LOCAL_DIR, name + ".pth")]


def from_config(config: dict, source: str = "config") -> AsymmetricCroCo3DStereo:
    """A randomly initialised DUSt3R from constructor keywords, validated (errors name `source`)."""
    unknown = sorted(set(config) - CONFIG_FIELDS)
    if unknown:
        raise ValueError(f"{source}: unknown DUSt3R config field(s) {unknown}; known: {sorted(CONFIG_FIELDS)}")
    cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
    try:
        return AsymmetricCroCo3DStereo(**cfg)
    except (AssertionError, ValueError, TypeError) as e:
        raise ValueError(f"{source}: cannot build DUSt3R from config {config}: {e}") from e


# ----------------------------------------------------------------------------------------------------
# official .pth

def parse_model_string(s: str) -> dict:
    """args.model string -> constructor kwargs, after the official load_model rewrites, without eval."""
    s = s.replace("ManyAR_PatchEmbed", "PatchEmbedDust3R")  # rewrite 1: the inference patch embedding
    if "landscape_only" not in s:  # rewrite 2, both branches of the official loader
        s = s[:-1] + ", landscape_only=False)"
    else:
        s = s.replace(" ", "").replace("landscape_only=True", "landscape_only=False")
    assert "landscape_only=False" in s, s
    try:
        call = ast.parse(s, mode="eval").body
    except SyntaxError as e:
        raise ValueError(f"args.model is not a constructor call: {s!r}") from e
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)
            and call.func.id == "AsymmetricCroCo3DStereo" and not call.args):
        raise ValueError(f"args.model must be AsymmetricCroCo3DStereo(key=value, ...), got {s!r}")
    out = {}
    for kw in call.keywords:
        if kw.arg is None:
            raise ValueError(f"args.model: **kwargs are not supported: {s!r}")
        node = _InfToConstant().visit(kw.value)
        try:
            out[kw.arg] = ast.literal_eval(node)
        except ValueError as e:
            raise ValueError(f"args.model: {kw.arg}= is not a literal: {ast.unparse(kw.value)}") from e
    return out


class _InfToConstant(ast.NodeTransformer):
    """`inf` is a global of dust3r/model.py; literal_eval knows only literals, so make it a constant."""

    def visit_Name(self, node):
        if node.id == "inf":
            return ast.copy_location(ast.Constant(math.inf), node)
        raise ValueError(f"args.model: unexpected name {node.id!r}")


def _read_pth(path):
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path}: not a torch checkpoint (not a zip archive: truncated, or another format?)")
    try:  # weights_only: tensors, containers and the allow-listed Namespace, nothing else is unpickled
        with torch.serialization.safe_globals([argparse.Namespace]):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's own message suggests retrying with weights_only=False, which would run the payload: not passed on
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        raise ValueError(f"{path}: refused: the file contains executable Python objects "
                         f"({'pickle global ' + found.group(1) if found else 'pickle globals'} beyond tensors and "
                         f"argparse.Namespace), which an official DUSt3R checkpoint never holds; unpickling them "
                         f"could run arbitrary code, so nothing in it was loaded. Use an official file "
                         f"(https://download.europe.naverlabs.com/ComputerVision/DUSt3R/) or a Hugging Face "
                         f"folder (config.json + model.safetensors)") from None
    except Exception as e:  # noqa: BLE001 - re-raised with the file named
        raise ValueError(f"{path}: cannot read the checkpoint ({type(e).__name__}). A truncated download? "
                         f"Compare its size/sha256 with the official file.") from e
    if not (isinstance(ckpt, dict) and "model" in ckpt and hasattr(ckpt.get("args"), "model")):
        keys = list(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{path}: expected an official DUSt3R checkpoint {{'model': state_dict, 'args': "
                         f"Namespace(model='AsymmetricCroCo3DStereo(...)')}}, found {keys}")
    return parse_model_string(ckpt["args"].model), ckpt["model"]


# ----------------------------------------------------------------------------------------------------
# Hugging Face layout

def _read_hf_folder(folder):
    cfg_path, w_path = os.path.join(folder, "config.json"), os.path.join(folder, "model.safetensors")
    for p in (cfg_path, w_path):
        if not os.path.isfile(p):
            raise FileNotFoundError(f"{p} not found: a Hugging Face DUSt3R folder holds config.json and model.safetensors")
    try:
        with open(cfg_path) as f:
            config = json.load(f)  # Python's json reads the Infinity / -Infinity that naver's configs hold
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_path}: not valid JSON ({e})") from e
    from safetensors.torch import load_file
    try:
        state = load_file(w_path)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{w_path}: cannot read safetensors ({e}); truncated download?") from e
    return config, state


def _hub_folder(repo_id):
    """Download config.json + model.safetensors (or take them from the cache when offline)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:  # pragma: no cover - it is in requirements.txt
        raise ImportError("loading from the hub needs huggingface_hub (pip install huggingface_hub)") from e
    allow = ["config.json", "model.safetensors"]
    try:
        return snapshot_download(repo_id, allow_patterns=allow)
    except Exception:  # noqa: BLE001 - offline or blocked: fall back to the local cache
        try:
            return snapshot_download(repo_id, allow_patterns=allow, local_files_only=True)
        except Exception as e:  # noqa: BLE001
            name = repo_id.split("/")[-1]
            raise FileNotFoundError(
                f"{repo_id}: not in the local Hugging Face cache and the hub cannot be reached. Download "
                f"https://huggingface.co/{repo_id}/resolve/main/model.safetensors and config.json into a folder "
                f"and pass that folder, or the official .pth "
                f"(https://download.europe.naverlabs.com/ComputerVision/DUSt3R/{name}.pth) and pass its path.") from e


# ----------------------------------------------------------------------------------------------------
# strict state-dict loading

def load_state_dict_strict(model, state: dict, source="checkpoint"):
    """Official key handling (CroCo dec_blocks2 copy, DPT aliases), then load_state_dict(strict=True) with an
    error that names the missing and unexpected keys."""
    state = dict(state)
    if not any(k.startswith("dec_blocks2") for k in state):  # CroCo-pretrained: one decoder, copied (official)
        state.update({k.replace("dec_blocks", "dec_blocks2", 1): v for k, v in list(state.items()) if k.startswith("dec_blocks")})
    expected = model.state_dict()
    for k in expected:  # HF safetensors drop the alias keys of shared tensors; the .pth has both spellings
        m = _ALIAS.match(k)
        if m and k not in state and f"{m.group(1)}layer{int(m.group(2)) + 1}_rn.weight" in state:
            state[k] = state[f"{m.group(1)}layer{int(m.group(2)) + 1}_rn.weight"]
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{source}: checkpoint does not match the DUSt3R config: {len(missing)} missing key(s) "
                         f"[{_summarise(missing)}], {len(unexpected)} unexpected key(s) [{_summarise(unexpected)}]. "
                         f"Is it another model, or the config of another checkpoint?")
    bad = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
           for k, v in expected.items() if tuple(state[k].shape) != tuple(v.shape)]
    if bad:
        raise ValueError(f"{source}: shape mismatch for {len(bad)} key(s): {bad[:8]}")
    model.load_state_dict(state, strict=True)
    return model


def _summarise(keys) -> str:
    """Group keys by module: 'dec_blocks.{3..9}.* (140)', 'downstream_head1.dpt.* (60)', ..."""
    groups = {}
    for k in keys:
        parts = k.split(".")
        if len(parts) > 2 and parts[1].isdigit():
            groups.setdefault(parts[0] + ".{}.*", []).append(int(parts[1]))
        else:
            groups.setdefault(".".join(parts[:2]) + (".*" if len(parts) > 2 else ""), []).append(None)
    out = []
    for g, idx in groups.items():
        if "{}" in g:
            g = g.replace("{}", f"{{{min(idx)}..{max(idx)}}}" if min(idx) != max(idx) else str(idx[0]))
        out.append(f"{g} ({len(idx)})")
    return ", ".join(out)
