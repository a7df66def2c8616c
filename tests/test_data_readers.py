"""Readers on tiny BlendedMVS / ARKitScenes trees written here in DUSt3R's preprocessed layouts,
image folders, and bad input (missing roots, wrong layouts, unreadable files)."""
import json
import warnings

import numpy as np
import PIL.Image
import pytest
import torch

from data import collate_pairs, make_dataset, make_loader
from data.correspondence import reproject
from data.exr import write_exr
from data.images import load_images
from data.render import render
from data.scenes import make_scene

# seq_low % 10: 7 -> train (and >= 2**63, so it needs uint64), 0 -> val
SEQ_HIGH, SEQ_LOW_TRAIN, SEQ_LOW_VAL = 0x5c2f1a9e, 10163303202330254117, 3215431477326318390


def _renders(n=3, size=(160, 120)):
    scene = make_scene(5, "train", 0, views_per_scene=n)
    return [render(scene, i, size) for i in range(n)]


def make_blendedmvs(root, n=3):
    """Scene A (train, seq_low >= 2**63) with n images and scene B (val) with 2 images."""
    rows = []
    for seq_low, count in ((SEQ_LOW_TRAIN, n), (SEQ_LOW_VAL, 2)):
        scene = root / f"{SEQ_HIGH:08x}{seq_low:016x}"
        scene.mkdir(parents=True)
        for i, (img, depth, K, pose) in enumerate(_renders(count)):
            PIL.Image.fromarray(img).save(scene / f"{i:08d}.jpg", quality=80)
            write_exr(scene / f"{i:08d}.exr", depth)
            np.savez(scene / f"{i:08d}.npz", intrinsics=np.float32(K), R_cam2world=pose[:3, :3],
                     t_cam2world=np.float32(pose[:3, 3]))
        rows += [(SEQ_HIGH, seq_low, i, i + 1, 0.5) for i in range(count - 1)]
    dtype = [("seq_high", "<u4"), ("seq_low", "<u8"), ("img1", "<u4"), ("img2", "<u4"), ("score", "<f4")]
    np.save(root / "blendedmvs_pairs.npy", np.array(rows, dtype=dtype))
    return root


def make_arkitscenes(root, n=3):
    """Training split with one scene of n frames (the last one portrait) and chained pairs."""
    split = root / "Training"
    scene = "41069021"
    (split / scene / "vga_wide").mkdir(parents=True)
    (split / scene / "lowres_depth").mkdir(parents=True)
    images, Ks, poses = [], [], []
    for i, (img, depth, K, pose) in enumerate(_renders(n)):
        if i == n - 1:  # a portrait frame, as LEFT/RIGHT scenes are after the preprocessing's rotation
            img, depth = img[:, :90], depth[:, :90]
        name = f"{scene}_{100 + i}.000.png"
        PIL.Image.fromarray(img).save(split / scene / "vga_wide" / name.replace(".png", ".jpg"))
        PIL.Image.fromarray(np.uint16(np.round(depth * 1000))).save(split / scene / "lowres_depth" / name)
        images.append(name), Ks.append(K), poses.append(pose)
    np.savez(split / "all_metadata.npz", scenes=np.array([scene]), sceneids=np.zeros(n, np.int64),
             images=np.array(images), intrinsics=np.array(Ks), trajectories=np.array(poses),
             pairs=np.array([(i, i + 1, 0.5) for i in range(n - 1)], np.float64), counts=np.array([0]))
    (split / "scene_list.json").write_text(json.dumps([scene]))
    return root


def test_blendedmvs_tree_splits_and_geometry(tmp_path):
    root = make_blendedmvs(tmp_path / "bmvs")
    train = make_dataset("blendedmvs", root, resolution=(128, 96), split="train", seed=1)
    val = make_dataset("blendedmvs", root, resolution=(128, 96), split="val", seed=1)
    assert (len(train), len(val)) == (2, 1)
    v1, v2 = train[1]
    assert v1["label"] == f"{SEQ_HIGH:08x}{SEQ_LOW_TRAIN:016x}"
    assert (v1["instance"], v2["instance"]) == ("00000001", "00000002")
    assert v1["img"].shape == (3, 96, 128) and v1["true_shape"].tolist() == [96, 128]
    # a view-1 pixel seen in view 2 lands where view 2 sees the same world point
    uv, vis = reproject(v1, v2)
    assert vis.mean() > 0.3
    ys, xs = np.nonzero(vis)
    u, v = np.floor(uv[ys, xs] + 0.5).astype(int).T
    gap = np.linalg.norm(v1["pts3d"][ys, xs] - v2["pts3d"][v, u], axis=-1) / v2["depthmap"][v, u]
    assert np.median(gap) < 0.01


def test_arkitscenes_tree_portrait_and_depth(tmp_path):
    root = make_arkitscenes(tmp_path / "ark")
    ds = make_dataset("arkitscenes", root, resolution=(96, 64), split="train", seed=3)
    assert len(ds) == 2
    v1, v2 = ds[1]
    assert v2["true_shape"].tolist() == [96, 64] and v2["img"].shape == (3, 64, 96)  # portrait, transposed
    assert v1["dataset"] == "arkitscenes" and v2["instance"] == "1_2"
    assert v2["depthmap"].shape == (64, 96) and 0.5 < float(np.median(v2["depthmap"])) < 10  # metres
    with pytest.raises(ValueError, match="split"):
        make_dataset("arkitscenes", root, split="nonsense")


def test_missing_and_wrong_roots_name_path_and_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match="blendedmvs_pairs.npy") as e:
        make_dataset("blendedmvs", tmp_path / "nope")
    assert str(tmp_path / "nope") in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="expected DUSt3R's preprocessed BlendedMVS layout"):
        make_dataset("blendedmvs", tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="Training/all_metadata.npz") as e:
        make_dataset("arkitscenes", tmp_path / "empty")
    assert str(tmp_path / "empty") in str(e.value) and "lowres_depth" in str(e.value)
    root = make_blendedmvs(tmp_path / "bmvs")
    for d in root.iterdir():  # pairs file present but scene folders elsewhere: a wrong root
        if d.is_dir():
            d.rename(tmp_path / d.name)
    with pytest.raises(FileNotFoundError, match="none of the"):
        make_dataset("blendedmvs", root)
    with pytest.raises(ValueError, match="needs root"):
        make_dataset("folder")


def test_unreadable_files_are_skipped_counted_and_capped(tmp_path):
    root = make_blendedmvs(tmp_path / "bmvs", n=6)  # 5 train pairs
    scene = root / f"{SEQ_HIGH:08x}{SEQ_LOW_TRAIN:016x}"
    (scene / "00000002.jpg").write_bytes(b"not a jpeg")
    ds = make_dataset("blendedmvs", root, resolution=(64, 48), max_bad_fraction=0.5)
    with pytest.warns(UserWarning, match="00000002.jpg"):
        v1, _ = ds[1]  # pair (1, 2) is bad -> replaced by the next readable pair (2, 3)? also bad -> (3, 4)
    assert v1["instance"] == "00000003"
    assert ds.bad_items == 2 and ds.summary()["bad_items"] == 2
    exr = scene / "00000005.exr"
    exr.write_bytes(exr.read_bytes()[:200])  # truncated depth
    strict = make_dataset("blendedmvs", root, resolution=(64, 48), max_bad_fraction=0.2)
    with warnings.catch_warnings(), pytest.raises(RuntimeError, match="max_bad_fraction"):
        warnings.simplefilter("ignore")
        for i in range(len(strict)):
            strict[i]


def _save_exif_rotated(path, img, orientation):
    exif = PIL.Image.Exif()
    exif[0x0112] = orientation  # 6: the stored landscape pixels display rotated 90 degrees (portrait)
    PIL.Image.fromarray(img).save(path, exif=exif.tobytes())


def test_folder_pairs_exif_and_windows(tmp_path):
    imgs = _renders(4)
    for i, (img, *_) in enumerate(imgs):
        if i == 2:
            _save_exif_rotated(tmp_path / f"frame_{i:03d}.jpg", img, 6)
        else:
            PIL.Image.fromarray(img).save(tmp_path / f"frame_{i:03d}.png")
    (tmp_path / "notes.txt").write_text("ignored")
    ds = make_dataset("folder", tmp_path, resolution=(96, 64), window=1)
    assert ds.pairs == [(0, 1), (1, 2), (2, 3)]
    assert len(make_dataset("folder", tmp_path, resolution=(96, 64), all_pairs=True)) == 6
    v1, v2 = ds[1]
    assert v2["instance"] == "frame_002.jpg" and v2["true_shape"].tolist() == [96, 64]  # EXIF portrait
    assert v2["img"].shape == (3, 64, 96) and "depthmap" not in v2
    assert v1["true_shape"].tolist() == [64, 96]
    out = load_images(str(tmp_path), 224)
    assert out[2]["true_shape"].tolist() == [[224, 224]] and len(out) == 4


def test_bad_images_in_folder_and_load_images(tmp_path):
    for i, (img, *_) in enumerate(_renders(3)):
        PIL.Image.fromarray(img).save(tmp_path / f"{i}.png")
    (tmp_path / "1.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(OSError, match="1.png"):
        load_images(str(tmp_path), 512)
    ds = make_dataset("folder", tmp_path, resolution=(64, 48), window=2, max_bad_fraction=0.5)
    with pytest.warns(UserWarning, match="1.png"):
        v1, v2 = ds[0]  # (0, 1) bad -> (0, 2)
    assert (v1["instance"], v2["instance"]) == ("0.png", "2.png") and ds.bad_items == 1
    fresh = make_dataset("folder", tmp_path, resolution=(64, 48), window=2, max_bad_fraction=0.7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # workers' warnings; the count must reach the main process
        n = sum(len(v1["instance"]) for v1, _ in make_loader(fresh, 2, shuffle=False, num_workers=2))
    assert n == 3 and fresh.bad_items == 2 and fresh.summary()["bad_fraction"] == 2 / 3  # (0, 1), (1, 2)
    (tmp_path / "sub").mkdir()
    with pytest.raises(FileNotFoundError, match="no .jpg"):
        make_dataset("folder", tmp_path / "sub")


def test_exr_roundtrip_raw_chunks_and_errors(tmp_path):
    from data.exr import read_exr
    noise = np.random.default_rng(0).standard_normal((37, 29)).astype(np.float32)  # incompressible: raw chunks
    smooth = np.tile(np.linspace(1, 2, 29, dtype=np.float32), (37, 1))  # compressible: ZIP chunks
    for name, arr in (("noise.exr", noise), ("smooth.exr", smooth)):
        write_exr(tmp_path / name, arr)
        assert np.array_equal(read_exr(tmp_path / name), arr)
    data = (tmp_path / "smooth.exr").read_bytes()
    (tmp_path / "bad.exr").write_bytes(b"\x00" * 8 + data[8:])
    with pytest.raises(ValueError, match="bad.exr"):
        read_exr(tmp_path / "bad.exr")


def _image_only_twins(name, root, **kw):
    """(dataset with geometry, same dataset with geometry=False), multi-resolution with zoom draws."""
    kw = dict(resolution=[(96, 64), (64, 64)], seed=5, **kw)
    return make_dataset(name, root, **kw), make_dataset(name, root, geometry=False, **kw)


@pytest.mark.parametrize("name", ["builtin", "middlebury", "blendedmvs", "arkitscenes", "folder"])
def test_geometry_false_gives_the_same_images_and_rng_draws(name, tmp_path):
    root, kw = None, dict(aug_crop=16)
    if name == "builtin":
        kw.update(n_scenes=1, portrait_prob=0.5)
    elif name == "blendedmvs":
        root = make_blendedmvs(tmp_path / "bmvs", n=4)
    elif name == "arkitscenes":
        root = make_arkitscenes(tmp_path / "ark", n=4)  # its last frame is portrait
    elif name == "folder":
        root, kw = tmp_path / "imgs", {}
        root.mkdir()
        for i, (img, *_) in enumerate(_renders(3)):
            PIL.Image.fromarray(img[:, :100] if i == 1 else img).save(root / f"{i}.png")
    full, bare = _image_only_twins(name, root, **kw)
    assert len(full) == len(bare) and bare.geometry is False
    for i in range(len(full)):
        for ar in range(2):
            for a, b in zip(full[i, ar], bare[i, ar]):
                assert set(b) == {"img", "true_shape", "dataset", "label", "instance", "idx", "rng"}
                assert torch.equal(a["img"], b["img"]) and a["rng"] == b["rng"] and a["idx"] == b["idx"]
                assert np.array_equal(a["true_shape"], b["true_shape"]) and a["instance"] == b["instance"]
                assert name == "folder" or "pts3d" in a  # the geometry path keeps its geometry
    v1, _ = collate_pairs([bare[0], bare[1]])
    assert set(v1) == {"img", "true_shape", "dataset", "label", "instance", "idx", "rng"}


def test_geometry_false_never_reads_depth(tmp_path):
    bmvs = make_blendedmvs(tmp_path / "bmvs")
    ark = make_arkitscenes(tmp_path / "ark")
    for depth in [*bmvs.rglob("*.exr"), *ark.rglob("lowres_depth/*.png")]:
        depth.write_bytes(b"not a depth map")
    for name, root in (("blendedmvs", bmvs), ("arkitscenes", ark)):
        bare = make_dataset(name, root, resolution=(64, 48), geometry=False, max_bad_fraction=0)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a skipped pair would warn
            assert all(bare[i][0]["img"].shape == (3, 48, 64) for i in range(len(bare)))
        full = make_dataset(name, root, resolution=(64, 48), max_bad_fraction=0)
        with pytest.warns(UserWarning, match="depth"), pytest.raises(RuntimeError, match="max_bad_fraction"):
            full[0]
