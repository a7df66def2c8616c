"""models/loading.py: the official .pth string parsed without eval, clear loading errors, the offline
hub message, random-weight models and the checkpoints/ fallback (golden fixtures: tests/fixtures/golden)."""
import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from models.loading import load_dust3r, parse_model_string

GOLDEN = Path(__file__).parent / "fixtures" / "golden"


# ---------------------------------------------------------------- loading: rewrites and errors
def test_model_string_rewrites_and_no_eval():
    raw = (GOLDEN / "linear/model_args.txt").read_text().splitlines()[1]
    cfg = parse_model_string(raw)
    assert cfg["patch_embed_cls"] == "PatchEmbedDust3R" and cfg["landscape_only"] is False
    assert cfg["depth_mode"] == ("exp", -math.inf, math.inf)
    other = "AsymmetricCroCo3DStereo(pos_embed = 'RoPE100', landscape_only = True, enc_depth = 2)"
    assert parse_model_string(other) == {"pos_embed": "RoPE100", "landscape_only": False, "enc_depth": 2}
    with pytest.raises(ValueError):
        parse_model_string("AsymmetricCroCo3DStereo(enc_depth=__import__('os').getpid())")
    with pytest.raises(ValueError):
        parse_model_string("os.system('true')")


def test_loading_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        load_dust3r(tmp_path / "nope.pth")
    cut = tmp_path / "cut.pth"
    cut.write_bytes((GOLDEN / "linear/checkpoint.pth").read_bytes()[:300_000])
    with pytest.raises(ValueError, match="cut.pth"):
        load_dust3r(cut)
    # the DPT config with the linear weights: names the missing and unexpected keys
    mixed = tmp_path / "mixed.pth"
    ck = torch.load(GOLDEN / "linear/checkpoint.pth", weights_only=False)
    ck["args"].model = (GOLDEN / "dpt/model_args.txt").read_text().splitlines()[1]
    torch.save(ck, mixed)
    with pytest.raises(ValueError, match=r"missing.*downstream_head1\.dpt.*unexpected.*downstream_head1\.proj"):
        load_dust3r(mixed)
    hf = tmp_path / "hf"
    shutil.copytree(GOLDEN / "linear/hf", hf)
    cfg = json.loads((hf / "config.json").read_text())
    (hf / "config.json").write_text(json.dumps(dict(cfg, enc_dpeth=2)))
    with pytest.raises(ValueError, match="enc_dpeth"):
        load_dust3r(hf)
    (hf / "config.json").write_text(json.dumps(dict(cfg, enc_embed_dim=64)))
    with pytest.raises(ValueError, match="shape mismatch"):
        load_dust3r(hf)
    (hf / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_dust3r(hf)


def test_hub_id_offline_says_what_to_download(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(FileNotFoundError, match="DUSt3R_ViTLarge_BaseDecoder_224_linear.pth"):
        load_dust3r("naver/DUSt3R_ViTLarge_BaseDecoder_224_linear")


# ---------------------------------------------------------------- random weights and the offline fallback
def test_random_models_are_seeded_and_leave_the_callers_rng_alone():
    torch.manual_seed(5)
    before = torch.rand(3)
    torch.manual_seed(5)
    a = load_dust3r("random-tiny", landscape_only=True, seed=1)
    assert torch.equal(torch.rand(3), before)  # drawn in a forked RNG
    b, c = load_dust3r("random-tiny", landscape_only=True, seed=1), load_dust3r("random-tiny", seed=2)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.enc_blocks[0].attn.qkv.weight, c.enc_blocks[0].attn.qkv.weight)
    assert a.landscape_only and not c.landscape_only and not a.training
    assert a.enc_embed_dim == 32 and not any(p.requires_grad for p in a.parameters())


def test_unreachable_source_falls_back_to_checkpoints_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(GOLDEN / "linear/hf", tmp_path / "checkpoints" / "tiny_linear")
    logs = []
    model = load_dust3r("gone/elsewhere/tiny_linear", landscape_only=True, log=logs.append)
    ref = load_dust3r(GOLDEN / "linear/hf", landscape_only=True)
    assert logs == ["checkpoint gone/elsewhere/tiny_linear unreachable; using local copy checkpoints/tiny_linear"]
    assert all(torch.equal(x, y) for x, y in zip(model.state_dict().values(), ref.state_dict().values()))
    with pytest.raises(FileNotFoundError, match="also looked for checkpoints/nothing and checkpoints/nothing.pth"):
        load_dust3r("gone/elsewhere/nothing")
