"""Multi-view pair datasets with exact geometry for DUSt3R SAEs (see README.md, section Data).

make_dataset(name, ...) -> a Dataset whose items are (view1, view2) DUSt3R view dicts;
collate_pairs / make_loader batch them; patch_correspondences / predicted_correspondences map
view-1 tokens to view-2 tokens.
"""
import importlib

from data.correspondence import patch_correspondences, predicted_correspondences
from data.loading import collate_pairs, make_loader

# One row per dataset, so adding one is one line: its class, whether it reads a root folder, and the name
# of its held-out split ('val' or 'test'; None: the class has no splits and takes no `split`).
REGISTRY = {
    "builtin": ("data.scenes.BuiltinScenes", False, "val"),
    "blendedmvs": ("data.blendedmvs.BlendedMVS", True, "val"),
    "arkitscenes": ("data.arkitscenes.ARKitScenes", True, "test"),
    "folder": ("data.folder.ImageFolderPairs", True, None),
    "middlebury": ("data.middlebury.MiddleburyStereo", False, None),
}
DATASETS = tuple(REGISTRY)


def make_dataset(name, root=None, resolution=224, split="train", seed=0, **kw):
    """Build a pair dataset by name; resolution 224 -> 224x224, 512 -> (512, 384), or (W, H).

    split: 'train' or 'val' ('test' is accepted as 'val' and vice versa: ARKitScenes calls its
    held-out split 'test', BlendedMVS 'val'); None = all pairs (BlendedMVS only). Extra keyword
    arguments go to the dataset class (e.g. aug_crop, max_bad_fraction, window, n_scenes, and
    geometry=False for image-only views: no depth, mask or pointmap work, bit-identical images; what
    SAE training reads).
    """
    name = name.lower()
    if name not in REGISTRY:
        raise ValueError(f"unknown dataset {name!r}; choose one of {DATASETS}")
    path, reads_root, held_out = REGISTRY[name]
    if reads_root and root is None:
        raise ValueError(f"dataset {name!r} needs root=<path>; see README.md, section Data for the layout")
    module, cls = path.rsplit(".", 1)
    if held_out is not None:
        kw["split"] = held_out if split in ("val", "test") else split
    return getattr(importlib.import_module(module), cls)(*([root] if reads_root else []), resolution=resolution,
                                                         seed=seed, **kw)


__all__ = ["make_dataset", "collate_pairs", "make_loader", "patch_correspondences", "predicted_correspondences",
           "DATASETS"]
