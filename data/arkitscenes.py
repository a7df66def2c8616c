"""ARKitScenes as written by DUSt3R's `datasets_preprocess/preprocess_arkitscenes.py`.

Reproduces `dust3r.datasets.ARKitScenes` (official: dust3r/datasets/arkitscenes.py): split 'train' reads
<root>/Training, 'test' reads <root>/Test; item i is row i of all_metadata.npz['pairs'] (global
image indices). Depth is uint16 millimetres -> float32 metres.
"""
import os

import numpy as np
import PIL.Image

from data.base import PairDataset, UnreadableFile, read_or_raise
from data.images import open_rgb
from data.views import crop_resize, finish_view

LAYOUT = """expected DUSt3R's preprocessed ARKitScenes layout:
  <root>/Training/ and <root>/Test/, each with
    all_metadata.npz    scenes, sceneids, images, intrinsics (N,3,3), trajectories (N,4,4), pairs (P,3)
    scene_list.json
    <scene>/vga_wide/<scene>_<timestamp>.jpg   <scene>/lowres_depth/<scene>_<timestamp>.png (uint16 mm)
(made by dust3r's datasets_preprocess/preprocess_arkitscenes.py)"""

_SPLIT_DIRS = {"train": "Training", "test": "Test"}
_KEYS = ("scenes", "sceneids", "images", "intrinsics", "trajectories", "pairs")


def _read_depth_png(path):
    with PIL.Image.open(path) as im:
        arr = np.array(im)
    if arr.ndim != 2 or arr.dtype not in (np.uint16, np.int32, np.uint8):
        raise ValueError(f"expected a single-channel 16-bit PNG, got {arr.dtype} {arr.shape}")
    return arr.astype(np.uint16)


class ARKitScenes(PairDataset):
    """Pairs of ARKitScenes frames; split in {'train', 'test'}."""

    name = "arkitscenes"

    def __init__(self, root, split="train", resolution=224, seed=0, aug_crop=0, max_bad_fraction=0.05, *,
                 geometry=True):
        super().__init__(resolution, seed, aug_crop, max_bad_fraction, geometry=geometry)
        if split not in _SPLIT_DIRS:
            raise ValueError(f"ARKitScenes split must be 'train' or 'test', got {split!r}")
        self.split = split
        self.root = os.path.join(str(root), _SPLIT_DIRS[split])
        meta_path = os.path.join(self.root, "all_metadata.npz")
        if not os.path.isdir(str(root)):
            raise FileNotFoundError(f"ARKitScenes root {root} does not exist; {LAYOUT}")
        if not os.path.isfile(meta_path):
            raise FileNotFoundError(f"ARKitScenes root {root} has no {_SPLIT_DIRS[split]}/all_metadata.npz; {LAYOUT}")
        with np.load(meta_path, allow_pickle=False) as z:
            missing = [k for k in _KEYS if k not in z.files]
            if missing:
                raise ValueError(f"{meta_path} lacks {missing}; {LAYOUT}")
            self.scenes = [str(s) for s in z["scenes"]]
            self.sceneids = z["sceneids"].astype(np.int64)
            self.images = [str(s) for s in z["images"]]
            self.intrinsics = z["intrinsics"]  # (N, 3, 3) float64; cropped in float32 (matches dust3r)
            self.trajectories = z["trajectories"]  # (N, 4, 4) cam-to-world, metres
            self.pairs = z["pairs"][:, :2].astype(int)  # (P, 2) global image indices
        if self.scenes and not any(os.path.isdir(os.path.join(self.root, s)) for s in self.scenes):
            raise FileNotFoundError(f"ARKitScenes {self.root}: none of the {len(self.scenes)} scene folders "
                                    f"listed in all_metadata.npz exists (e.g. {self.scenes[0]}); {LAYOUT}")
        self._bad_mask()

    def _depth(self, depth_path, image):
        depth = read_or_raise(_read_depth_png, depth_path, "depth")
        if depth.shape != (image.size[1], image.size[0]):
            raise UnreadableFile(f"depth {depth_path} is {depth.shape} but its image is {image.size[::-1]}")
        depth = depth.astype(np.float32) / 1000  # exact IEEE division, as dust3r
        depth[~np.isfinite(depth)] = 0
        return depth

    def _get_views(self, idx, resolution, rng):
        views = []
        for img_idx in self.pairs[idx]:
            scene = self.scenes[self.sceneids[img_idx]]
            basename = self.images[img_idx]
            scene_dir = os.path.join(self.root, scene)
            rgb_path = os.path.join(scene_dir, "vga_wide", basename.replace(".png", ".jpg"))
            image = read_or_raise(open_rgb, rgb_path, "image")
            depth = self._depth(os.path.join(scene_dir, "lowres_depth", basename), image) if self.geometry else None
            K = np.float32(self.intrinsics[img_idx])  # dust3r's crop arithmetic runs in float32 here
            image, depth, K = crop_resize(image, depth, K, resolution, rng, self.aug_crop)
            views.append(finish_view(image, depth, K, self.trajectories[img_idx], dataset="arkitscenes",
                                     label=f"{scene}_{basename}", instance=f"{idx}_{img_idx}"))
        return views
