"""Built-in procedural scenes: textured rooms with boxes and balls, ray-cast with exact geometry.

No download: textures are the photographs scikit-image ships inside its wheel (astronaut, chelsea,
coffee, brick, gravel, ...), see data/render.py. Each scene is an axis-aligned room (z up, metres)
holding yawed boxes and spheres, seen by `views_per_scene` cameras on an arc around the room
centre, looking inwards. Views are rendered lazily (vectorised numpy ray casting, LRU cache of 64
views per process) at a native 4:3 size 15% above the target, then go through DUSt3R's crop/resize
like real data.
Depth is the exact ray length along the optical axis; poses are cam-to-world (OpenCV axes).
Everything is a pure function of (seed, split, scene index).
"""
import collections

import numpy as np
import PIL.Image

from data.base import PairDataset
from data.render import OBJECT_TEXTURES, WALL_TEXTURES, render
from data.views import crop_resize, finish_view

_SPLIT_CODE = {"train": 0, "val": 1, "test": 1}


def _look_at(pos, target):
    z = target - pos
    z /= np.linalg.norm(z)
    x = np.cross(z, [0.0, 0.0, 1.0])  # world z is up; OpenCV camera: x right, y down, z forward
    x /= np.linalg.norm(x)
    pose = np.eye(4)
    pose[:3, :3] = np.stack([x, np.cross(z, x), z], 1)
    pose[:3, 3] = pos
    return pose


def make_scene(seed, split, index, views_per_scene=6, portrait_prob=0.0):
    """Random room description (plain dict of numpy arrays); deterministic in its arguments."""
    rng = np.random.default_rng([seed, _SPLIT_CODE[split], index])
    half = rng.uniform([2.5, 2.5, 2.4], [4.0, 4.0, 3.2]) * [1, 1, 0.5]  # room half-extents, z is height/2
    room_lo, room_hi = np.array([-half[0], -half[1], 0.0]), np.array([half[0], half[1], 2 * half[2]])
    walls = [str(rng.choice(WALL_TEXTURES)) for _ in range(6)]  # -x +x -y +y floor ceiling
    tints = rng.uniform(0.5, 1.0, (6, 3))
    boxes, spheres = [], []
    radius = 0.8 * min(half[0], half[1])  # cameras stand on this circle

    def inner():  # a point of the disc of radius radius / 2: objects (<= 0.71 m) stay clear of cameras
        r, a = 0.5 * radius * np.sqrt(rng.random()), rng.uniform(0, 2 * np.pi)
        return np.array([r * np.cos(a), r * np.sin(a)])

    for _ in range(rng.integers(3, 6)):  # boxes stand on the floor
        size = rng.uniform([0.3, 0.3, 0.3], [1.0, 1.0, 1.4])
        centre = np.r_[inner(), size[2] / 2]
        boxes.append(dict(centre=centre, half=size / 2, yaw=rng.uniform(0, np.pi),
                          tex=str(rng.choice(OBJECT_TEXTURES)), tint=rng.uniform(0.7, 1.0, 3)))
    for _ in range(rng.integers(1, 3)):
        r = rng.uniform(0.2, 0.45)
        centre = np.r_[inner(), rng.uniform(r, 1.6)]
        spheres.append(dict(centre=centre, radius=r, tex=str(rng.choice(OBJECT_TEXTURES)),
                            tint=rng.uniform(0.7, 1.0, 3)))
    cams, angle = [], rng.uniform(0, 2 * np.pi)
    for _ in range(views_per_scene):  # an arc: neighbours overlap a lot, distant views less
        angle += rng.uniform(0.12, 0.28)
        pos = np.array([radius * np.cos(angle), radius * np.sin(angle), rng.uniform(1.0, 1.8)])
        target = np.r_[rng.uniform(-0.3, 0.3, 2) * half[:2], rng.uniform(0.4, 1.0)]
        cams.append(dict(pose=_look_at(pos, target), hfov=np.deg2rad(rng.uniform(55, 75)),
                         pp_jitter=rng.uniform(-3, 3, 2), portrait=bool(rng.random() < portrait_prob)))
    light = np.array([0.3, -0.4, 1.0]) / np.linalg.norm([0.3, -0.4, 1.0])
    return dict(room=(room_lo, room_hi), walls=walls, tints=tints, boxes=boxes, spheres=spheres,
                cams=cams, light=light, name=f"builtin-{split}-{seed}-{index:04d}")


class BuiltinScenes(PairDataset):
    """Pairs (i, j), 1 <= j - i <= max_gap, of views of procedural rooms; see module docstring."""

    name = "builtin"

    def __init__(self, split="train", resolution=224, seed=0, n_scenes=None, views_per_scene=6, max_gap=2,
                 portrait_prob=0.0, aug_crop=0, max_bad_fraction=0.05, *, geometry=True):
        super().__init__(resolution, seed, aug_crop, max_bad_fraction, geometry=geometry)
        if split not in _SPLIT_CODE:
            raise ValueError(f"builtin split must be 'train', 'val' or 'test', got {split!r}")
        self.split, self.scene_seed = split, 0 if seed is None else seed
        self.n_scenes = n_scenes or (32 if split == "train" else 8)
        self.views_per_scene, self.portrait_prob = views_per_scene, portrait_prob
        last = views_per_scene - 1
        local = [(i, j) for i in range(views_per_scene) for j in range(i + 1, min(i + max_gap, last) + 1)]
        self.pairs = [(s, i, j) for s in range(self.n_scenes) for i, j in local]
        W, H = max(r[0] for r in self.resolutions), max(r[1] for r in self.resolutions)
        # native 4:3 render slightly larger than any target, so crop/resize downscales like real data
        self.native = (int(np.ceil(1.15 * max(W, H * 4 / 3))), int(np.ceil(1.15 * max(H, W * 3 / 4))))
        self._cache = collections.OrderedDict()  # (scene, view) -> rendered view; LRU per process
        self._bad_mask()

    def scene(self, s):
        """Description of scene s (cheap; regenerated on demand)."""
        return make_scene(self.scene_seed, self.split, s, self.views_per_scene, self.portrait_prob)

    def _render(self, s, i):
        key = (s, i)
        if key not in self._cache:
            self._cache[key] = render(self.scene(s), i, self.native)
            if len(self._cache) > 64:  # ~40 MB at 224; enough for shuffled access to hit often
                self._cache.popitem(last=False)
        self._cache.move_to_end(key)
        return self._cache[key]

    def _get_views(self, idx, resolution, rng):
        s, i, j = self.pairs[idx]
        views = []
        for cam in (i, j):
            img, depth, K, pose = self._render(s, cam)  # the ray caster gets depth for free (shading needs it)
            depth = depth if self.geometry else None
            image = PIL.Image.fromarray(img)
            image, depth, K = crop_resize(image, depth, np.float32(K), resolution, rng, self.aug_crop)
            name = f"builtin-{self.split}-{self.scene_seed}-{s:04d}"
            views.append(finish_view(image, depth, K, pose, dataset="builtin", label=name,
                                     instance=f"{name}-view{cam}"))
        return views
