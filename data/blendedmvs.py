"""BlendedMVS as written by DUSt3R's `datasets_preprocess/preprocess_blendedMVS.py`.

Reproduces `dust3r.datasets.BlendedMVS` (official: dust3r/datasets/blendedmvs.py): item i is row i of the
split-filtered pair list; train = seq_low % 10 > 0, val = seq_low % 10 == 0, None = all.
Depth is in BlendedMVS scene units (not metric).
"""
import os

import numpy as np

from data.base import PairDataset, UnreadableFile, read_or_raise
from data.exr import read_exr
from data.images import open_rgb
from data.views import crop_resize, finish_view

LAYOUT = """expected DUSt3R's preprocessed BlendedMVS layout:
  <root>/blendedmvs_pairs.npy                 structured array (seq_high, seq_low, img1, img2, score)
  <root>/<seq_high:08x><seq_low:016x>/        one folder per scene (24 hex digits)
      <img:08d>.jpg  <img:08d>.exr (float32 depth)  <img:08d>.npz (intrinsics, R_cam2world, t_cam2world)
(made by dust3r's datasets_preprocess/preprocess_blendedMVS.py)"""


def _load_camera(path):
    with np.load(path) as z:
        K = np.float32(z["intrinsics"])
        pose = np.eye(4, dtype=np.float32)
        pose[:3, :3] = z["R_cam2world"]  # stored float64, cast like dust3r's assignment
        pose[:3, 3] = z["t_cam2world"]
    return K, pose


class BlendedMVS(PairDataset):
    """Pairs of BlendedMVS views; split in {'train', 'val', None}."""

    name = "BlendedMVS"

    def __init__(self, root, split="train", resolution=224, seed=0, aug_crop=0, max_bad_fraction=0.05, *,
                 geometry=True):
        super().__init__(resolution, seed, aug_crop, max_bad_fraction, geometry=geometry)
        self.root = str(root)
        pairs_path = os.path.join(self.root, "blendedmvs_pairs.npy")
        if not os.path.isdir(self.root):
            raise FileNotFoundError(f"BlendedMVS root {self.root} does not exist; {LAYOUT}")
        if not os.path.isfile(pairs_path):
            raise FileNotFoundError(f"BlendedMVS root {self.root} has no blendedmvs_pairs.npy; {LAYOUT}")
        pairs = np.load(pairs_path, allow_pickle=False)
        names = pairs.dtype.names or ()
        if len(names) < 4:
            raise ValueError(f"{pairs_path}: expected a structured array with fields "
                             f"(seq_high, seq_low, img1, img2, score), got dtype {pairs.dtype}; {LAYOUT}")
        # seq_low must be uint64: about half of the real scene ids are >= 2**63
        seq_high = pairs[names[0]].astype(np.uint64)
        seq_low = pairs["seq_low" if "seq_low" in names else names[1]].astype(np.uint64)
        if split == "train":
            keep = seq_low % np.uint64(10) > 0
        elif split == "val":
            keep = seq_low % np.uint64(10) == 0
        elif split is None:
            keep = np.ones(len(pairs), bool)
        else:
            raise ValueError(f"BlendedMVS split must be 'train', 'val' or None, got {split!r}")
        self.split = split
        self.scenes = [f"{int(h):08x}{int(lo):016x}" for h, lo in zip(seq_high[keep], seq_low[keep])]
        self.pairs = np.stack([pairs[names[2]][keep], pairs[names[3]][keep]], 1).astype(np.int64)  # (P, 2)
        present = {s for s in set(self.scenes) if os.path.isdir(os.path.join(self.root, s))}
        if self.scenes and not present:
            raise FileNotFoundError(f"BlendedMVS root {self.root}: none of the {len(set(self.scenes))} scene "
                                    f"folders named in blendedmvs_pairs.npy exists (e.g. {self.scenes[0]}); {LAYOUT}")
        self._bad_mask()

    def _get_views(self, idx, resolution, rng):
        scene = self.scenes[idx]
        views = []
        for img in self.pairs[idx]:
            name = f"{int(img):08d}"  # dust3r formats with '08n'; identical in the C locale
            base = os.path.join(self.root, scene, name)
            image = read_or_raise(open_rgb, base + ".jpg", "image")
            depth = read_or_raise(read_exr, base + ".exr", "depth") if self.geometry else None
            K, pose = read_or_raise(_load_camera, base + ".npz", "camera")  # K sets the crop: read either way
            if depth is not None and depth.shape != (image.size[1], image.size[0]):
                raise UnreadableFile(f"depth {base}.exr is {depth.shape} but image {base}.jpg is {image.size[::-1]}")
            image, depth, K = crop_resize(image, depth, K, resolution, rng, self.aug_crop)
            views.append(finish_view(image, depth, K, pose, dataset="BlendedMVS", label=scene, instance=name))
        return views
