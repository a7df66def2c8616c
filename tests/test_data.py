"""Built-in scenes, Middlebury, correspondences, crop/resize geometry, collation and loaders."""
import numpy as np
import PIL.Image
import pytest
import torch
from scipy.ndimage import map_coordinates

from data import collate_pairs, make_dataset, make_loader, patch_correspondences, predicted_correspondences
from data.correspondence import reproject
from data.render import render
from data.scenes import make_scene
from data.views import crop_resize, depth_to_world, finish_view, untranspose


@pytest.fixture(scope="module")
def builtin():
    return make_dataset("builtin", resolution=(320, 240), n_scenes=2, portrait_prob=0.5, seed=3)


def _project(X, K, pose):
    Xc = (X - pose[:3, 3]) @ pose[:3, :3]  # world -> camera: R^T (X - t)
    z = Xc[..., 2]
    return np.stack([K[0, 0] * Xc[..., 0] / z + K[0, 2], K[1, 1] * Xc[..., 1] / z + K[1, 2]], -1), z


def test_builtin_is_deterministic_and_seeded():
    a = make_dataset("builtin", resolution=224, n_scenes=2, seed=0)
    b = make_dataset("builtin", resolution=224, n_scenes=2, seed=0)
    c = make_dataset("builtin", resolution=224, n_scenes=2, seed=1)
    assert len(a) == 18 and torch.equal(a[4][0]["img"], b[4][0]["img"])
    assert np.array_equal(a[4][1]["pts3d"], b[4][1]["pts3d"])
    assert not torch.equal(a[4][0]["img"], c[4][0]["img"])
    assert a[4][0]["img"].std() > 0.1 and a[4][0]["valid_mask"].all()  # textured, closed room
    val = make_dataset("builtin", resolution=224, n_scenes=2, split="val", seed=0)
    assert not torch.equal(a[0][0]["img"], val[0][0]["img"])


def _miss_px(v1, v2):
    """For view-1 pixels visible in view 2: distance between the view-1 world point and view 2's world
    point at the continuous projection (bilinear in view 2's pts3d), in view-2 pixels at that depth."""
    uv, vis = reproject(v1, v2)
    ys, xs = np.nonzero(vis)
    X2 = np.stack([map_coordinates(v2["pts3d"][..., c].astype(np.float64), [uv[ys, xs, 1], uv[ys, xs, 0]],
                                   order=1, mode="nearest") for c in range(3)], -1)
    u, v = np.floor(uv[ys, xs] + 0.5).astype(int).T
    footprint = v2["depthmap"][v, u] / v2["camera_intrinsics"][0, 0]
    return np.linalg.norm(v1["pts3d"][ys, xs] - X2, axis=-1) / footprint, (ys, xs, u, v)


def test_builtin_geometry_matches_pixels(builtin):
    """A view-1 pixel projected through depth and poses lands where view 2 sees the same point."""
    scene = make_scene(3, "train", 0, portrait_prob=0.5)
    v1, v2 = (finish_view(PIL.Image.fromarray(im), d, K, p) for im, d, K, p in
              (render(scene, k, (320, 240)) for k in (0, 2)))
    miss, _ = _miss_px(v1, v2)  # as rendered: exact up to float32
    assert len(miss) > 20000 and np.median(miss) < 0.01 and np.mean(miss < 0.5) > 0.95
    n_portrait = 0
    for i in range(0, len(builtin), 3):  # after DUSt3R's crop/resize (nearest-neighbour depth)
        v1, v2 = (untranspose(v) for v in builtin[i])  # real orientation: K is a pinhole K again
        n_portrait += int(v1["true_shape"][0] > v1["true_shape"][1])
        miss, (ys, xs, u, v) = _miss_px(v1, v2)
        assert len(miss) > 1000 and np.median(miss) < 0.6 and np.mean(miss < 1.5) > 0.85
        # the pictures agree too: colours of corresponding pixels match far better than shifted ones
        im1, im2 = v1["img"].numpy(), v2["img"].numpy()
        same = np.abs(im1[:, ys, xs] - im2[:, v, u]).mean()
        shifted = np.abs(im1[:, ys, xs] - im2[:, v, np.clip(u + 9, 0, im2.shape[2] - 1)]).mean()
        assert same < 0.5 * shifted
    assert n_portrait > 0


def test_patch_correspondences_follow_geometry(builtin):
    for i in (0, 4, 8):
        v1, v2 = builtin[i]
        corr = patch_correspondences(v1, v2)
        H1, W1 = v1["true_shape"]
        H2, W2 = v2["true_shape"]
        w1, w2 = W1 // 16, W2 // 16
        assert corr.shape == ((H1 // 16) * w1,) and corr.dtype == torch.int64 and corr.source == "geometry"
        assert (corr >= 0).float().mean() > 0.1
        r1, r2 = untranspose(v1), untranspose(v2)
        p = torch.nonzero(corr >= 0)[:, 0].numpy()
        cy, cx = p // w1 * 16 + 8, p % w1 * 16 + 8  # patch centres in view 1, real orientation
        ok = r1["valid_mask"][cy, cx]
        uv, _ = _project(r1["pts3d"][cy, cx].astype(np.float64), r2["camera_intrinsics"], r2["camera_pose"])
        q = corr[p].numpy()
        dx, dy = np.abs(uv[:, 0] // 16 - q % w2), np.abs(uv[:, 1] // 16 - q // w2)
        assert np.mean(np.maximum(dx, dy)[ok] <= 1) > 0.97  # within one patch of the centre's projection


def test_identity_pairs():
    ds = make_dataset("builtin", resolution=(320, 240), n_scenes=1, portrait_prob=1.0, seed=2)
    v, _ = ds[0]
    assert v["true_shape"].tolist() == [320, 240] and v["img"].shape == (3, 240, 320)
    corr = patch_correspondences(v, v)
    assert torch.equal(corr, torch.arange(20 * 15))
    assert torch.equal(patch_correspondences(untranspose(v), untranspose(v)), corr)
    pred = predicted_correspondences(v["pts3d"], v["pts3d"], true_shape1=v["true_shape"], true_shape2=v["true_shape"])
    assert pred.source == "predicted" and torch.equal(pred, corr)


def test_predicted_agree_with_geometry(builtin):
    agree, n = 0, 0
    for i in range(0, len(builtin), 4):
        v1, v2 = builtin[i]
        gt = patch_correspondences(v1, v2)
        conf = np.ones(v1["depthmap"].shape, np.float32)
        pred = predicted_correspondences(torch.from_numpy(v1["pts3d"]), v2["pts3d"], conf, conf,
                                         true_shape1=v1["true_shape"], true_shape2=v2["true_shape"])
        both = (gt >= 0) & (pred >= 0)
        agree, n = agree + int((gt[both] == pred[both]).sum()), n + int(both.sum())
    assert n > 50 and agree / n > 0.85


@pytest.mark.parametrize("resolution,aug_crop", [((224, 224), 0), ((512, 384), 0), ((160, 96), 16)])
def test_crop_resize_keeps_world_points(resolution, aug_crop):
    """After resize and crop, unprojecting depth with the new K and pose gives the native world points."""
    img, depth, K, pose = render(make_scene(1, "train", 0), 0, (344, 258))
    rng = np.random.default_rng(0)
    image, d2, K2 = crop_resize(PIL.Image.fromarray(img), depth, np.float32(K), resolution, rng, aug_crop)
    assert image.size == resolution and d2.shape == resolution[::-1]
    X = depth_to_world(d2, K2, np.float32(pose)).astype(np.float64)  # (H, W, 3)
    uv, z = _project(X, K.astype(np.float64), pose)  # back into the native camera
    ui = np.clip(np.floor(uv[..., 0] + 0.5).astype(int), 0, 343)
    vi = np.clip(np.floor(uv[..., 1] + 0.5).astype(int), 0, 257)
    # nearest-neighbour depth comes from within one native pixel of where K puts the point
    win = np.lib.stride_tricks.sliding_window_view(np.pad(depth, 1, mode="edge"), (3, 3))  # (258, 344, 3, 3)
    lo, hi = win.min((2, 3))[vi, ui], win.max((2, 3))[vi, ui]
    inside = (z >= lo * (1 - 1e-4)) & (z <= hi * (1 + 1e-4))
    assert inside.mean() > 0.97 and np.median(np.abs(depth[vi, ui] - z) / z) < 0.01
    # and the new K points each output pixel at the native content it shows: sampling the native
    # image where K2 sends it fits the output image better than K2 shifted by half a pixel
    out, native = np.asarray(image, np.float64), img.astype(np.float64)

    def photo_err(dx, dy):
        Ks = K2.copy()
        Ks[0, 2] += dx
        Ks[1, 2] += dy
        uv, _ = _project(depth_to_world(d2, Ks, np.float32(pose)).astype(np.float64), K.astype(np.float64), pose)
        got = np.stack([map_coordinates(native[..., c], [uv[..., 1], uv[..., 0]], order=1, mode="nearest")
                        for c in range(3)], -1)
        return np.abs(got - out).mean()

    shifted = [photo_err(dx, dy) for dx, dy in ((0.5, 0), (-0.5, 0), (0, 0.5), (0, -0.5))]
    assert photo_err(0, 0) < 0.75 * min(shifted)
    assert np.all(np.isin(d2, depth))  # nearest-neighbour resizing never invents depth values


def test_middlebury_pair_geometry():
    ds = make_dataset("middlebury", resolution=(512, 384))
    v1, v2 = ds[0]
    assert (v1["instance"], v2["instance"]) == ("left", "right") and len(ds) == 2
    uv, vis = reproject(v1, v2)
    ys, xs = np.nonzero(vis)
    assert vis.mean() > 0.5 and np.abs(uv[ys, xs, 1] - ys).max() < 1e-3  # rectified: same row
    u = np.floor(uv[ys, xs, 0] + 0.5).astype(int)
    im1, im2 = v1["img"].numpy(), v2["img"].numpy()
    shifted = np.abs(im1[:, ys, xs] - im2[:, ys, np.clip(u + 8, 0, 511)]).mean()
    assert np.abs(im1[:, ys, xs] - im2[:, ys, u]).mean() < 0.5 * shifted
    corr = patch_correspondences(v1, v2)
    m = torch.nonzero(corr >= 0)[:, 0]
    assert len(m) > 100 and torch.all(corr[m] // 32 == m // 32)  # matches stay on the same patch row


def test_collate_and_loader_determinism():
    ds = make_dataset("builtin", resolution=(64, 48), n_scenes=2, portrait_prob=0.5, seed=0)
    v1, v2 = collate_pairs([ds[0], ds[1], ds[2]])
    assert v1["img"].shape == (3, 3, 48, 64) and v1["true_shape"].dtype == torch.int64
    assert v1["true_shape"].shape == (3, 2) and v1["pts3d"].shape == (3, 48, 64, 3) and len(v2["instance"]) == 3
    order = lambda loader: [s for v1, _ in loader for s in v1["instance"]]
    a = order(make_loader(ds, 4, seed=7, num_workers=0))
    assert a == order(make_loader(ds, 4, seed=7, num_workers=0)) != order(make_loader(ds, 4, seed=8, num_workers=0))
    assert order(make_loader(ds, 4, seed=7, num_workers=2)) == a  # workers do not change the order
    multi = make_dataset("builtin", resolution=[(64, 48), (48, 48)], n_scenes=1, seed=0)
    shapes = {tuple(v1["img"].shape[2:]) for v1, _ in make_loader(multi, 3, seed=0, num_workers=0)}
    assert shapes <= {(48, 64), (48, 48)} and len(shapes) >= 1
