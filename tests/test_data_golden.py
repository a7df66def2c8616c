"""Our readers and `load_images` against outputs of DUSt3R's official code (fixtures copied from
the team's golden set: tests/fixtures/dust3r_datasets, tests/fixtures/dust3r_preprocess)."""
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from data.arkitscenes import ARKitScenes
from data.blendedmvs import BlendedMVS
from data.exr import read_exr
from data.images import load_images, open_rgb

FIX = Path(__file__).parent / "fixtures"
DS = FIX / "dust3r_datasets"
INDEX = json.loads((DS / "index.json").read_text())
READERS = {"BlendedMVS": BlendedMVS, "ARKitScenes": ARKitScenes}


def _sha(a):
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def _kwargs(kw):
    # JSON [W, H] stands for a tuple; a list of pairs for a list of tuples
    kw = dict(kw)
    res = kw["resolution"]
    if isinstance(res, list):
        kw["resolution"] = [tuple(r) for r in res] if isinstance(res[0], list) else tuple(res)
    return kw


@pytest.mark.parametrize("entry", json.loads((FIX / "dust3r_preprocess" / "expected.json").read_text()),
                         ids=lambda e: f"{e['source']}-{e['call']}")
def test_load_images_matches_official(entry):
    out = load_images([str(FIX / "dust3r_preprocess" / "sources" / entry["source"])], **entry["call"])[0]
    assert list(out["img"].shape) == entry["img_shape"]
    assert out["true_shape"].tolist() == entry["true_shape"] and out["true_shape"].dtype == np.int32
    assert _sha(out["img"].numpy().astype("<f4")) == entry["sha256_float32_le"]


@pytest.mark.parametrize("rel", sorted(INDEX["decoded_files"]))
def test_decoders_match_official(rel):
    exp = INDEX["decoded_files"][rel]
    if rel.endswith(".exr"):
        arr = read_exr(DS / rel)
    elif rel.endswith(".jpg"):
        arr = np.asarray(open_rgb(DS / rel))
    else:
        arr = np.asarray(__import__("PIL.Image").Image.open(DS / rel))
    assert list(arr.shape) == exp["shape"] and str(arr.dtype) == exp["dtype"]
    assert _sha(arr) == exp["sha256"]


@pytest.mark.parametrize("case", INDEX["cases"], ids=lambda c: c["name"])
def test_reader_matches_official(case):
    exp = load_file(DS / case["file"])
    ds = READERS[case["dataset"]](root=DS / case["root"], **_kwargs(case["kwargs"]))
    assert len(ds) == case["len"]
    s = case["stride"]
    for k, item in enumerate(case["items"]):
        index = tuple(item["index"]) if isinstance(item["index"], list) else item["index"]
        views = ds[index]
        for v, (view, info) in enumerate(zip(views, item["views"])):
            key = f"item{k}.view{v}."
            for field in ("dataset", "label", "instance"):
                assert view[field] == info[field], (field, view[field], info[field])
            assert view["true_shape"].dtype == np.int32
            assert view["true_shape"].tolist() == info["true_shape"]
            assert list(view["idx"]) == exp[key + "idx"].tolist() and view["rng"] == int(exp[key + "rng"][0])
            assert torch.equal(view["img"][:, ::s, ::s], exp[key + "img"])
            for field in ("depthmap", "valid_mask"):
                assert np.array_equal(view[field][::s, ::s], exp[key + field].numpy()), field
            assert np.array_equal(view["camera_pose"], exp[key + "camera_pose"].numpy())
            np.testing.assert_allclose(view["camera_intrinsics"], exp[key + "camera_intrinsics"].numpy(),
                                       rtol=1e-6, atol=1e-4)
            np.testing.assert_allclose(view["pts3d"][::s, ::s], exp[key + "pts3d"].numpy(), rtol=1e-5, atol=1e-5)
            assert int(view["valid_mask"].sum()) == info["valid_count"]
            if s > 1:  # strided cases: the full arrays are checked by hash
                full = info["full_sha256"]
                assert _sha(view["img"].numpy()) == full["img"]
                assert _sha(view["depthmap"]) == full["depthmap"]
                assert _sha(view["valid_mask"]) == full["valid_mask"]


IMAGE_ONLY_FIELDS = {"img", "true_shape", "dataset", "label", "instance", "idx", "rng"}


@pytest.mark.parametrize("case", INDEX["cases"], ids=lambda c: c["name"])
def test_reader_without_geometry_matches_official_images(case):
    # geometry=False (SAE training) skips depth; its images and rng draws are still the official ones
    exp = load_file(DS / case["file"])
    ds = READERS[case["dataset"]](root=DS / case["root"], geometry=False, **_kwargs(case["kwargs"]))
    assert len(ds) == case["len"]
    s = case["stride"]
    for k, item in enumerate(case["items"]):
        index = tuple(item["index"]) if isinstance(item["index"], list) else item["index"]
        for v, (view, info) in enumerate(zip(ds[index], item["views"])):
            key = f"item{k}.view{v}."
            assert set(view) == IMAGE_ONLY_FIELDS
            strings = ("dataset", "label", "instance")
            assert [view[f] for f in strings] == [info[f] for f in strings]
            assert view["true_shape"].dtype == np.int32 and view["true_shape"].tolist() == info["true_shape"]
            assert list(view["idx"]) == exp[key + "idx"].tolist() and view["rng"] == int(exp[key + "rng"][0])
            assert torch.equal(view["img"][:, ::s, ::s], exp[key + "img"])
            if s > 1:
                assert _sha(view["img"].numpy()) == info["full_sha256"]["img"]
