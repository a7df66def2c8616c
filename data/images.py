"""Image reading and DUSt3R's inference preprocessing (`dust3r.utils.image.load_images`).

The resize/crop rules follow the official dust3r.utils.image.load_images and are checked bit-for-bit
against the official outputs in tests/fixtures/dust3r_preprocess. Images are normalised to
[-1, 1] with mean = std = 0.5 (not ImageNet statistics), as DUSt3R does.
"""
import os

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


def open_rgb(path):
    """Open an image file upright (EXIF orientation applied) as a PIL RGB image.

    Raises OSError naming the file when it is missing or cannot be decoded.
    """
    try:
        with PIL.Image.open(path) as im:
            # in place: decodes inside the try and copies nothing when the image is upright and RGB (the
            # usual case; the default exif_transpose and convert('RGB') each return a full copy)
            PIL.ImageOps.exif_transpose(im, in_place=True)
            return im if im.mode == "RGB" else im.convert("RGB")
    except (OSError, ValueError, PIL.Image.DecompressionBombError) as err:
        raise OSError(f"cannot read image {path}: {err}") from err


def normalize(img):
    """PIL RGB or uint8 (H, W, 3) array -> float32 tensor (3, H, W) in [-1, 1].

    Same float32 ops as torchvision's ToTensor then Normalize(0.5, 0.5): (u8/255 - 0.5)/0.5, each
    IEEE-rounded, so numpy gives identical bits (and is much faster than torch on tiny tensors).
    """
    x = np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).astype(np.float32)  # (3, H, W), contiguous
    # in place: the same three float32 ops, without two fresh (3, H, W) temporaries (their page faults
    # dominated the time at 512x384)
    np.divide(x, np.float32(255), out=x)
    np.subtract(x, np.float32(0.5), out=x)
    np.divide(x, np.float32(0.5), out=x)
    return torch.from_numpy(x)


def _resize_long_side(img, long_side):
    # LANCZOS when shrinking, BICUBIC when enlarging (or same size: Pillow returns a copy)
    W, H = img.size
    S = max(W, H)
    new_size = tuple(int(round(x * long_side / S)) for x in (W, H))
    interp = PIL.Image.LANCZOS if S > long_side else PIL.Image.BICUBIC
    return img.resize(new_size, interp)


def preprocess(img, size, square_ok=False, patch_size=16):
    """Resize and centre-crop one PIL image the way `load_images(..., size)` does.

    size == 224: short side -> 224, then a centred 224x224 square.
    other sizes: long side -> size, then crop each side down to a multiple of patch_size;
    square inputs become 4:3 (e.g. 512x384) unless square_ok.
    """
    W1, H1 = img.size
    if size == 224:
        img = _resize_long_side(img, round(size * max(W1 / H1, H1 / W1)))
    else:
        img = _resize_long_side(img, size)
    W, H = img.size
    cx, cy = W // 2, H // 2
    if size == 224:
        half = min(cx, cy)
        return img.crop((cx - half, cy - half, cx + half, cy + half))
    halfw = ((2 * cx) // patch_size) * patch_size / 2
    halfh = ((2 * cy) // patch_size) * patch_size / 2
    if not square_ok and W == H:
        halfh = 3 * halfw / 4
    return img.crop((cx - halfw, cy - halfh, cx + halfw, cy + halfh))


def list_images(folder):
    """Sorted image files (jpg/jpeg/png, any case) of a folder; raises naming the folder if none."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"image folder {folder} does not exist (expected a folder of jpg/png files)")
    names = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))
    if not names:
        raise FileNotFoundError(f"no .jpg/.jpeg/.png images in {folder}")
    return [os.path.join(folder, f) for f in names]


def load_images(folder_or_list, size, square_ok=False, patch_size=16):
    """DUSt3R's `load_images`: a folder (sorted) or list of paths -> list of dicts.

    Each dict: img (1, 3, H, W) float32 in [-1, 1], true_shape np.int32 [[H, W]], idx int,
    instance str(idx). Unreadable files raise OSError naming the file.
    """
    if isinstance(folder_or_list, (str, os.PathLike)):
        paths = list_images(folder_or_list)
    else:
        paths = [p for p in folder_or_list if str(p).lower().endswith(IMAGE_EXTENSIONS)]
        if not paths:
            raise FileNotFoundError(f"no .jpg/.jpeg/.png paths in the given list ({len(folder_or_list)} entries)")
    out = []
    for path in paths:
        img = preprocess(open_rgb(path), size, square_ok=square_ok, patch_size=patch_size)
        W, H = img.size
        out.append(dict(img=normalize(img)[None], true_shape=np.int32([[H, W]]),
                        idx=len(out), instance=str(len(out))))
    return out
