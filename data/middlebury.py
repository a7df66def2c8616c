"""The one real stereo pair scikit-image ships: Middlebury 2014 'motorcycle' with GT disparity.

Files motorcycle_left/right.png and motorcycle_disp.npz come inside the scikit-image wheel (no
download). Calibration of these quarter-size images, from `skimage.data.stereo_motorcycle`'s
docstring (Middlebury 2014, downscaled by 4): f = 994.978 px, principal point (311.193, 254.877),
doffs = cx_right - cx_left = 31.086 px, baseline 193.001 mm. Checked here: left (y, x) matches
right (y, x - d) (the docstring's example has the sign the other way); invalid disparity is inf.
Geometry: Z = f * B / (d + doffs) in metres for the left view; the right camera sits at +B along
x with the same rotation; its depth is the left depth forward-splatted (z-buffer), 0 in holes;
its first 31 columns are dropped so both views get the same crop and scale (rows stay aligned).
The two items are (left, right) and (right, left).
"""
import os

import numpy as np
import PIL.Image

from data.base import PairDataset
from data.views import crop_resize, finish_view

F, CX, CY, DOFFS, BASELINE = 994.978, 311.193, 254.877, 31.086, 0.193001


def load_motorcycle():
    """-> left, right uint8 (500, 741, 3), disparity float32 (500, 741) (inf = invalid)."""
    import skimage.data
    folder = os.path.dirname(skimage.data.__file__)
    paths = [os.path.join(folder, f) for f in ("motorcycle_left.png", "motorcycle_right.png", "motorcycle_disp.npz")]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"scikit-image does not ship {missing} in this install; the 'middlebury' "
                                "dataset needs scikit-image >= 0.19 with its bundled data files")
    left, right = (np.asarray(PIL.Image.open(p).convert("RGB")) for p in paths[:2])
    with np.load(paths[2]) as z:
        disp = z["arr_0"].astype(np.float32)
    return left, right, disp


def _depths(disp):
    """Disparity (H, W) -> left depth, right depth (H, W) float32 in metres, 0 = invalid."""
    H, W = disp.shape
    ok = np.isfinite(disp) & (disp + DOFFS > 0)
    depth_l = np.where(ok, F * BASELINE / np.where(ok, disp + DOFFS, 1), 0).astype(np.float32)
    # right depth: splat each left pixel to x - d, keep the nearest surface per target pixel
    ys, xs = np.nonzero(ok)
    xr = np.floor(xs - disp[ys, xs] + 0.5).astype(np.int64)
    inside = (xr >= 0) & (xr < W)
    flat = ys[inside] * W + xr[inside]
    z = depth_l[ys[inside], xs[inside]]
    depth_r = np.full(H * W, np.inf, np.float32)
    np.minimum.at(depth_r, flat, z)
    return depth_l, np.where(np.isfinite(depth_r), depth_r, 0).reshape(H, W).astype(np.float32)


def motorcycle_geometry(geometry=True):
    """-> [(image, depth, K, pose) for left, right] in metres, OpenCV cam-to-world (left = world).
    geometry=False: depth is None (the disparity is not turned into depth)."""
    left, right, disp = load_motorcycle()
    depth_l, depth_r = _depths(disp) if geometry else (None, None)
    K_l = np.array([[F, 0, CX], [0, F, CY], [0, 0, 1]])
    # drop the right image's first round(doffs) columns: both principal points then round to the
    # same column, so DUSt3R's crop/resize treats both views alike and the pair stays rectified
    off = int(round(DOFFS))
    K_r = np.array([[F, 0, CX + DOFFS - off], [0, F, CY], [0, 0, 1]])
    pose_r = np.eye(4)
    pose_r[0, 3] = BASELINE
    depth_r = None if depth_r is None else depth_r[:, off:]
    return [(left, depth_l, K_l, np.eye(4)), (right[:, off:], depth_r, K_r, pose_r)]


class MiddleburyStereo(PairDataset):
    """Two items: (left, right) and (right, left) of the motorcycle pair, with exact geometry."""

    name = "middlebury"

    def __init__(self, resolution=224, seed=0, aug_crop=0, max_bad_fraction=0.05, *, geometry=True):
        super().__init__(resolution, seed, aug_crop, max_bad_fraction, geometry=geometry)
        self.views = motorcycle_geometry(geometry)
        self.pairs = [(0, 1), (1, 0)]
        self._bad_mask()

    def _get_views(self, idx, resolution, rng):
        out = []
        for i in self.pairs[idx]:
            img, depth, K, pose = self.views[i]
            image = PIL.Image.fromarray(img)
            image, depth, K = crop_resize(image, depth, np.float32(K), resolution, rng, self.aug_crop)
            out.append(finish_view(image, depth, K, pose, dataset="middlebury", label="motorcycle",
                                   instance=("left", "right")[i]))
        return out
