"""Fault cases a user meets: files the project reads that are malicious, corrupted or truncated each give
one clear error naming the file."""
import argparse
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from data import make_dataset
from models.loading import RANDOM_MODELS, load_dust3r
from models.sae import SAE, SAEConfig
from tests.test_data_readers import SEQ_HIGH, SEQ_LOW_TRAIN, make_arkitscenes, make_blendedmvs
from training.cache import ActivationCache
from training.checkpoint import load_checkpoint, save_checkpoint
from training.config import _raised_by_repo, apply_overrides
from training.hooks import hook_sources


class _RunsACommand:
    """Unpickling this calls os.system: a harmless command that leaves a marker file, if it ever ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_checkpoint_is_refused_as_executable(tmp_path):
    marker = tmp_path / "payload_ran"
    path = tmp_path / "DUSt3R_ViTLarge_BaseDecoder_224_linear.pth"
    torch.save({"model": {}, "args": _RunsACommand(marker)}, path)
    with pytest.raises(ValueError) as e:
        load_dust3r(path)
    msg = str(e.value)
    assert str(path) in msg and "executable" in msg and "system" in msg and "refused" in msg
    assert "weights_only" not in msg and "truncated" not in msg  # never the hint that would run it
    assert e.value.__cause__ is None and e.value.__suppress_context__  # torch's hint is not chained either
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------
# corrupted and truncated files of every kind the project reads: one error naming the file, raised by the
# repo's own code (so the scripts print it as one line with exit status 2, workbench/config.py)

def truncate(path, keep=0.5):
    path = Path(path)
    data = path.read_bytes()
    os.chmod(path, 0o644)  # cache shards are read-only
    path.write_bytes(data[:int(len(data) * keep)])
    return path


def assert_clear_error(fn, path, *words, types=(ValueError, OSError)):
    with pytest.raises(types) as e:
        fn()
    msg = str(e.value)
    assert str(path) in msg, msg
    for w in words:
        assert w in msg, (w, msg)
    assert _raised_by_repo(e.value), "raised inside a library: the scripts would show a traceback"
    return msg


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    """A tiny DUSt3R as .pth and HF folder, a saved SAE, a trainer checkpoint and an activation cache."""
    d = tmp_path_factory.mktemp("files")
    model = load_dust3r("random-tiny")
    cfg = RANDOM_MODELS["random-tiny"]
    args = "AsymmetricCroCo3DStereo(" + ", ".join(f"{k}={v!r}" for k, v in cfg.items()) + ")"
    torch.save({"model": model.state_dict(), "args": argparse.Namespace(model=args)}, d / "tiny.pth")
    (d / "hf").mkdir()
    (d / "hf" / "config.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, d / "hf" / "model.safetensors")
    sae = SAE(SAEConfig(d_in=32, n_latents=64, k=4))
    sae.save(d / "sae")
    optimizer = torch.optim.Adam(sae.parameters())
    save_checkpoint(d / "ckpt", sae, optimizer, {"step": 3, "config": {}})
    cache = ActivationCache(d / "cache", {"test": 1}, pairs_per_shard=2)
    cache.write(model, make_dataset("builtin", resolution=(64, 48), split="val"),
                sources=hook_sources("enc_norm", ("enc",)), device=torch.device("cpu"), n_pairs=4, dust3r_batch=2)
    return d, model


def test_truncated_checkpoints(tiny_files, tmp_path):
    d, _ = tiny_files
    assert load_dust3r(d / "tiny.pth") is not None and load_dust3r(d / "hf") is not None  # the intact files load
    pth = truncate(shutil.copy(d / "tiny.pth", tmp_path / "tiny.pth"))
    assert_clear_error(lambda: load_dust3r(pth), pth, "truncated")
    hf = shutil.copytree(d / "hf", tmp_path / "hf")
    truncate(Path(hf) / "model.safetensors")
    assert_clear_error(lambda: load_dust3r(hf), Path(hf) / "model.safetensors", "safetensors")
    (Path(hf) / "config.json").write_text('{"enc_depth": 2,')
    assert_clear_error(lambda: load_dust3r(hf), Path(hf) / "config.json", "not valid JSON")


def test_damaged_sae_files(tiny_files, tmp_path):
    d, _ = tiny_files
    sae_dir = Path(shutil.copytree(d / "sae", tmp_path / "sae"))
    truncate(sae_dir / "sae.safetensors")
    assert_clear_error(lambda: SAE.load(sae_dir), sae_dir / "sae.safetensors", "safetensors")
    (sae_dir / "sae_config.json").write_text("{")
    assert_clear_error(lambda: SAE.load(sae_dir), sae_dir / "sae_config.json", "not valid JSON")


def test_damaged_trainer_checkpoint(tiny_files, tmp_path):
    d, _ = tiny_files
    ckpt = Path(shutil.copytree(d / "ckpt", tmp_path / "ckpt"))
    sae = SAE(SAEConfig(d_in=32, n_latents=64, k=4))
    optimizer = torch.optim.Adam(sae.parameters())
    assert load_checkpoint(ckpt, sae, optimizer, "cpu")["step"] == 3
    (tensors,) = ckpt.glob("state_*.safetensors")
    truncate(tensors)
    assert_clear_error(lambda: load_checkpoint(ckpt, sae, optimizer, "cpu"), tensors, "damaged", "checkpoint/")
    (ckpt / "state.json").write_text('{"step": 3, "tensors": ')
    assert_clear_error(lambda: load_checkpoint(ckpt, sae, optimizer, "cpu"), ckpt / "state.json", "not valid JSON")


def test_damaged_cache(tiny_files, tmp_path):
    d, _ = tiny_files
    (key,) = os.listdir(d / "cache")
    cache_dir = Path(shutil.copytree(d / "cache", tmp_path / "cache"))
    cache = ActivationCache(cache_dir, {"test": 1}, pairs_per_shard=2)
    assert cache.open().read([0, 3]).shape == (2, 2 * 12, 32)  # 64x48: 4x3 patches per view
    shard = truncate(cache_dir / key / "shard_00000002_00000004.npy")
    assert_clear_error(cache.open, shard, "damaged cache shard", "delete the folder")
    os.chmod(cache_dir / key / "meta.json", 0o644)
    (cache_dir / key / "meta.json").write_text("{]")
    assert_clear_error(cache.open, cache_dir / key / "meta.json", "not valid JSON")


def test_damaged_config_files(tmp_path):
    bad = tmp_path / "sweep.yaml"
    bad.write_text("k: [4\n")
    assert_clear_error(lambda: apply_overrides({"k": 1}, [str(bad)], verbose=False), bad, "not valid YAML")
    bad.write_text("- 1\n- 2\n")
    assert_clear_error(lambda: apply_overrides({"k": 1}, [str(bad)], verbose=False), bad, "flat mapping")


def test_damaged_images_depth_and_exr_are_skipped_by_name(tmp_path):
    """Readers name the file; the dataset skips the pair with a warning naming it and counts it."""
    root = make_blendedmvs(tmp_path / "bmvs", n=6)
    scene = root / f"{SEQ_HIGH:08x}{SEQ_LOW_TRAIN:016x}"
    truncate(scene / "00000001.jpg", 0.3)
    truncate(scene / "00000003.exr", 0.5)
    ds = make_dataset("blendedmvs", root, resolution=(64, 48), max_bad_fraction=1.0)
    with pytest.warns(UserWarning) as w:
        for i in range(len(ds)):
            ds[i]
    text = " ".join(str(x.message) for x in w)
    assert "00000001.jpg" in text and "00000003.exr" in text
    assert ds.bad_items == 4  # pairs (0,1), (1,2), (2,3), (3,4) hold a damaged file
    ark = make_arkitscenes(tmp_path / "ark", n=4)
    (depth,) = [p for p in (ark / "Training").rglob("lowres_depth/*_101.000.png")]
    truncate(depth, 0.4)
    ds = make_dataset("arkitscenes", ark, resolution=(64, 48), max_bad_fraction=1.0)
    with pytest.warns(UserWarning, match=depth.name):
        v1, _ = ds[0]  # (0, 1) and (1, 2) hold the damaged depth: replaced by (2, 3)
    assert v1["idx"][0] == 2 and ds.bad_items == 2


def test_folder_summary_lists_pairs_skipped_in_workers(tmp_path):
    """Pairs skipped inside DataLoader workers are listed by their files in the main process's summary."""
    import warnings

    import PIL.Image

    from data import make_loader
    from tests.test_data_readers import _renders
    for i, (img, *_) in enumerate(_renders(5, size=(64, 48))):
        PIL.Image.fromarray(img).save(tmp_path / f"{i}.png")
    (tmp_path / "1.png").write_bytes(b"\x89PNG broken")
    ds = make_dataset("folder", tmp_path, resolution=(64, 48), window=1, max_bad_fraction=0.9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in make_loader(ds, 2, shuffle=False, num_workers=2):
            pass
    s = ds.summary()
    assert s["bad_items"] == 2 and s["skipped"] == ["pair 0: 0.png & 1.png", "pair 1: 1.png & 2.png"]
    assert s["examples"] == s["skipped"]


def test_bad_fraction_of_a_folder_counts_images_not_pairs(tmp_path):
    """1 broken photo of 20 (5 %) spoils 4 of 37 pairs (11 %) with window=2: max_bad_fraction=0.06 lets it
    through, as a user expects; a second broken photo (10 %) stops loading with the files counted."""
    import warnings

    import PIL.Image

    from tests.test_data_readers import _renders
    img = _renders(1, size=(64, 48))[0][0]
    for i in range(20):
        PIL.Image.fromarray(img).save(tmp_path / f"{i:02d}.png")
    (tmp_path / "07.png").write_bytes(b"broken")
    ds = make_dataset("folder", tmp_path, resolution=(64, 48), window=2, max_bad_fraction=0.06)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(len(ds)):
            ds[i]
    s = ds.summary()
    assert (s["pairs"], s["bad_items"], s["files"], s["bad_files"]) == (37, 4, 20, 1)
    (tmp_path / "12.png").write_bytes(b"broken")
    ds = make_dataset("folder", tmp_path, resolution=(64, 48), window=2, max_bad_fraction=0.06)
    with warnings.catch_warnings(), pytest.raises(RuntimeError, match="2 of 20 files are unreadable"):
        warnings.simplefilter("ignore")
        for i in range(len(ds)):
            ds[i]
