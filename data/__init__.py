"""Multi-view pair datasets with exact geometry for DUSt3R SAEs (see README.md, section Data).

make_dataset(name, ...) -> a Dataset whose items are (view1, view2) DUSt3R view dicts;
collate_pairs / make_loader batch them; patch_correspondences / predicted_correspondences map
view-1 tokens to view-2 tokens.
"""
from data.correspondence import patch_correspondences, predicted_correspondences
from data.loading import collate_pairs, make_loader

DATASETS = ("builtin", "blendedmvs", "arkitscenes", "folder", "middlebury")


def make_dataset(name, root=None, resolution=224, split="train", seed=0, **kw):
    """Build a pair dataset by name; resolution 224 -> 224x224, 512 -> (512, 384), or (W, H).

    split: 'train' or 'val' ('test' is accepted as 'val' and vice versa: ARKitScenes calls its
    held-out split 'test', BlendedMVS 'val'); None = all pairs (BlendedMVS only). Extra keyword
    arguments go to the dataset class (e.g. aug_crop, max_bad_fraction, window, n_scenes, and
    geometry=False for image-only views: no depth, mask or pointmap work, bit-identical images; what
    SAE training reads).
    """
    name = name.lower()
    if name in ("blendedmvs", "arkitscenes", "folder") and root is None:
        raise ValueError(f"dataset {name!r} needs root=<path>; see README.md, section Data for the layout")
    if name == "builtin":
        from data.scenes import BuiltinScenes
        return BuiltinScenes(split="val" if split == "test" else split, resolution=resolution, seed=seed, **kw)
    if name == "blendedmvs":
        from data.blendedmvs import BlendedMVS
        return BlendedMVS(root, split="val" if split == "test" else split, resolution=resolution, seed=seed, **kw)
    if name == "arkitscenes":
        from data.arkitscenes import ARKitScenes
        return ARKitScenes(root, split="test" if split == "val" else split, resolution=resolution, seed=seed, **kw)
    if name == "folder":
        from data.folder import ImageFolderPairs
        return ImageFolderPairs(root, resolution=resolution, seed=seed, **kw)
    if name == "middlebury":
        from data.middlebury import MiddleburyStereo
        return MiddleburyStereo(resolution=resolution, seed=seed, **kw)
    raise ValueError(f"unknown dataset {name!r}; choose one of {DATASETS}")


__all__ = ["make_dataset", "collate_pairs", "make_loader", "patch_correspondences", "predicted_correspondences",
           "DATASETS"]
