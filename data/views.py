"""Geometry common to every dataset: DUSt3R's crop/resize, unprojection and view-dict conventions.

Mirrors `BaseStereoViewDataset._crop_resize_if_necessary`, `depthmap_to_absolute_camera_coordinates`
and `transpose_to_landscape` exactly, including float32/float64 operation order, so our readers
reproduce the official outputs bit for bit (official: dust3r/datasets/base/base_stereo_view_dataset.py; tests/test_data_golden.py).
Conventions: K in OpenCV pixels (top-left pixel centre = (0, 0)); camera_pose cam-to-world with
OpenCV axes (x right, y down, z forward); depth 0 = invalid.
"""
import numpy as np
import PIL.Image

from data.images import normalize


def parse_resolution(resolution):
    """224 -> [(224, 224)], 512 -> [(512, 384)], (W, H) -> [(W, H)], list -> list of (W, H)."""
    if isinstance(resolution, (list, tuple)) and resolution and isinstance(resolution[0], (list, tuple)):
        return [r for res in resolution for r in parse_resolution(tuple(res))]
    if isinstance(resolution, int):
        # 512 is DUSt3R's 4:3 training resolution; any other int is square, as in DUSt3R
        return [(512, 384)] if resolution == 512 else [(resolution, resolution)]
    W, H = (int(x) for x in resolution)
    if W < H:  # DUSt3R's convention; the model additionally needs multiples of 16
        raise ValueError(f"resolution (W, H) must be landscape (W >= H), got {resolution}")
    return [(W, H)]


def crop(image, depth, K, box):
    """Crop PIL image and depth (or None) to box (l, t, r, b) and shift the principal point."""
    l, t, r, b = box
    K = K.copy()
    K[0, 2] -= l
    K[1, 2] -= t
    return image.crop((l, t, r, b)), None if depth is None else depth[t:b, l:r], K


def nearest_resize(depth, size):
    """cv2.resize(depth, (W, H), interpolation=INTER_NEAREST), reproduced exactly.

    OpenCV's source index is min(floor(x * (1 / (new / old))), old - 1) in double precision,
    with no half-pixel offset (neither the centre-aligned rule nor (x*old)//new matches it).
    """
    H, W = depth.shape[:2]
    new_w, new_h = size
    xs = np.minimum(np.floor(np.arange(new_w) * (1.0 / (new_w / W))).astype(np.int64), W - 1)
    ys = np.minimum(np.floor(np.arange(new_h) * (1.0 / (new_h / H))).astype(np.int64), H - 1)
    return depth[ys[:, None], xs[None, :]]


def _crop_camera(K, in_res, out_res, scaling=1):
    # dust3r cropping.camera_matrix_of_crop: scale in the COLMAP convention (+0.5), shift by half
    # the margin, back to OpenCV. In-place ops keep K's dtype but compute in float64 (NumPy >= 2).
    margins = np.asarray(in_res) * scaling - out_res
    assert np.all(margins >= 0.0), (in_res, out_res, scaling)
    Kc = K.copy()
    Kc[:2, 2] += 0.5
    Kc[:2, :] *= scaling
    Kc[:2, 2] -= 0.5 * margins
    Kc[:2, 2] -= 0.5
    return Kc


def rescale(image, depth, K, target):
    """Rescale so the image covers target (W, H): new = floor(size * (max ratio + 1e-8))."""
    in_res = np.array(image.size)
    s = max(np.asarray(target) / image.size) + 1e-8
    out_res = np.floor(in_res * s).astype(int)
    new_size = tuple(int(x) for x in out_res)
    image = image.resize(new_size, resample=PIL.Image.LANCZOS if s < 1 else PIL.Image.BICUBIC)
    depth = None if depth is None else nearest_resize(depth, new_size)
    return image, depth, _crop_camera(K, in_res, out_res, scaling=s)


def crop_resize(image, depth, K, resolution, rng, aug_crop=0):
    """DUSt3R's `_crop_resize_if_necessary`: PIL image, depth (H, W), K (3, 3) -> same, at resolution.

    depth=None (image-only views) skips the depth work and returns None for it; image, K and the
    rng draws do not depend on depth, so they are the same either way. Draws from rng (a numpy Generator) exactly as DUSt3R does: an orientation bit when the
    centred window is near-square and the target is not, then a zoom offset when aug_crop > 1.
    """
    W, H = image.size
    cx, cy = K[:2, 2].round().astype(int)  # np.round: half to even, as DUSt3R
    mx, my = min(cx, W - cx), min(cy, H - cy)
    image, depth, K = crop(image, depth, K, (cx - mx, cy - my, cx + mx, cy + my))

    W, H = image.size
    if H > 1.1 * W:
        resolution = resolution[::-1]
    elif 0.9 < H / W < 1.1 and resolution[0] != resolution[1]:
        if rng.integers(2):
            resolution = resolution[::-1]
    target = np.array(resolution)
    if aug_crop > 1:
        target += rng.integers(0, aug_crop)  # same zoom on both axes; the crop below keeps resolution
    image, depth, K = rescale(image, depth, K, target)

    K2 = _crop_camera(K, image.size, resolution)
    l, t = np.int32(np.round(K[:2, 2] - K2[:2, 2]))  # in K's dtype, like dust3r (ties matter)
    return crop(image, depth, K, (l, t, l + resolution[0], t + resolution[1]))


def depth_to_world(depth, K, pose):
    """Unproject depth (H, W) with K, map to world with cam-to-world pose -> pts3d (H, W, 3) float32.

    Same dtype path as dust3r: pixel offsets in float64, stacked and cast to float32, rotated
    with einsum in float32.
    """
    K = np.float32(K)
    assert K[0, 1] == 0.0 and K[1, 0] == 0.0, "skewed intrinsics are not supported"
    H, W = depth.shape
    u, v = np.meshgrid(np.arange(W), np.arange(H))
    x = (u - K[0, 2]) * depth / K[0, 0]
    y = (v - K[1, 2]) * depth / K[1, 1]
    X = np.stack((x, y, depth), axis=-1).astype(np.float32)  # (H, W, 3) camera frame
    return np.einsum("ik, vuk -> vui", pose[:3, :3], X) + pose[:3, 3][None, None, :]


def finish_view(image, depth, K, pose, **strings):
    """Cropped PIL image + geometry -> DUSt3R view dict (before transpose_to_landscape)."""
    W, H = image.size
    pose = np.float32(pose)
    view = dict(img=normalize(image), true_shape=np.int32((H, W)), **strings)
    if depth is not None:
        depth = np.float32(depth)
        pts3d = depth_to_world(depth, K, pose)
        view.update(depthmap=depth, camera_pose=pose, camera_intrinsics=np.float32(K), pts3d=pts3d,
                    valid_mask=(depth > 0.0) & np.isfinite(pts3d).all(axis=-1))
    return view


def transpose_to_landscape(view):
    """Portrait views become landscape tensors; true_shape keeps the real (H, W).

    Like DUSt3R, only K's rows are swapped ([[0, fy, cy], [fx, 0, cx], [0, 0, 1]]), which is not
    the pinhole K of the transposed image; camera_pose is untouched. Use `untranspose` to undo.
    """
    H, W = view["true_shape"]
    if W < H:
        view["img"] = view["img"].swapaxes(1, 2).contiguous()  # (3, W, H)
        for key in ("depthmap", "valid_mask"):
            if key in view:
                view[key] = np.ascontiguousarray(view[key].swapaxes(0, 1))
        if "pts3d" in view:
            view["pts3d"] = np.ascontiguousarray(view["pts3d"].swapaxes(0, 1))
        if "camera_intrinsics" in view:
            view["camera_intrinsics"] = view["camera_intrinsics"][[1, 0, 2]]
    return view


def untranspose(view):
    """Inverse of transpose_to_landscape on numpy/torch fields: views in their real orientation."""
    H, W = (int(x) for x in view["true_shape"])
    out = dict(view)
    shape = tuple(view["img"].shape[-2:]) if "img" in view else tuple(view["depthmap"].shape[:2])
    if W < H and shape == (W, H):
        out["img"] = view["img"].swapaxes(-1, -2)
        for key in ("depthmap", "valid_mask"):
            if key in view:
                out[key] = view[key].swapaxes(0, 1)
        if "pts3d" in view:
            out["pts3d"] = view["pts3d"].swapaxes(0, 1)
        if "camera_intrinsics" in view:
            out["camera_intrinsics"] = view["camera_intrinsics"][[1, 0, 2]]
    return out
