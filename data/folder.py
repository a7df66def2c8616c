"""Any folder of photos or video frames (jpg/png, EXIF orientation) as image pairs, no geometry.

Images are taken in sorted file-name order; pairs are neighbours within `window` (i, j) with
1 <= j - i <= window, or all pairs. Each image is centre-cropped to the target aspect and resized
with DUSt3R's dataset rule (data.views.crop_resize, principal point assumed at the centre), so
views follow the training convention: landscape tensors plus a real-orientation true_shape, and a
batch of any mix of photos collates. Views carry no depth/pose: use predicted correspondences.
"""
import os

import numpy as np

from data.base import PairDataset, read_or_raise
from data.images import IMAGE_EXTENSIONS, open_rgb
from data.views import crop_resize, finish_view


class ImageFolderPairs(PairDataset):
    """Pairs of images of one folder (optionally its sub-folders, each kept separate)."""

    name = "folder"

    def __init__(self, root, resolution=224, window=2, all_pairs=False, recursive=False, seed=0,
                 max_bad_fraction=0.05, *, geometry=True):
        # `geometry` is accepted so make_dataset(..., geometry=False) works for every dataset; a folder has none
        super().__init__(resolution, seed, 0, max_bad_fraction, geometry=False)
        self.root = str(root)
        if not os.path.isdir(self.root):
            raise FileNotFoundError(f"image folder {self.root} does not exist (expected a folder of .jpg/.png images)")
        groups = {}  # folder -> sorted image paths; pairs never cross folders (different sequences)
        for dirpath, dirnames, files in os.walk(self.root):
            dirnames.sort()
            names = sorted(f for f in files if f.lower().endswith(IMAGE_EXTENSIONS))
            if names:
                groups[dirpath] = [os.path.join(dirpath, f) for f in names]
            if not recursive:
                break
        if not groups:
            raise FileNotFoundError(f"no .jpg/.jpeg/.png images in {self.root}"
                                    + ("" if recursive else " (sub-folders are only searched with recursive=True)"))
        self.images, self.pairs = [], []
        for paths in groups.values():
            off, n = len(self.images), len(paths)
            self.images += paths
            span = n if all_pairs else window
            self.pairs += [(off + i, off + j) for i in range(n) for j in range(i + 1, min(i + span, n - 1) + 1)]
        if not self.pairs:
            raise ValueError(f"{self.root}: need at least 2 images per folder to form pairs, found {len(self.images)}")
        self.n_files = len(self.images)  # the bad-fraction rule counts unreadable images, not pairs
        self._bad_mask()

    def describe_pair(self, idx):
        return " & ".join(os.path.relpath(self.images[i], self.root) for i in self.pairs[idx])

    def _get_views(self, idx, resolution, rng):
        views = []
        for i in self.pairs[idx]:
            image = read_or_raise(open_rgb, self.images[i], "image", file_id=i)
            W, H = image.size
            K = np.float32([[max(W, H), 0, W / 2], [0, max(W, H), H / 2], [0, 0, 1]])  # nominal: centre crop
            image, _, _ = crop_resize(image, None, K, resolution, rng)
            rel = os.path.relpath(self.images[i], self.root)
            views.append(finish_view(image, None, None, np.eye(4), dataset="folder",
                                     label=os.path.dirname(rel) or os.path.basename(self.root.rstrip("/")),
                                     instance=rel))
        return views
