"""PLY export of DUSt3R pointmaps coloured by an SAE latent's activation (the 3D view of a latent).

Both views' points are in camera 1's frame (res1['pts3d'], res2['pts3d_in_other_view']), so one
file shows where a latent fires in 3D: a cross-view-consistent latent lights up one region from
both views. Written by our own code (binary little-endian or ASCII PLY 1.0, float xyz + uchar
rgb), readable by MeshLab, CloudCompare, Open3D, Blender.
"""
import numpy as np

from analysis.figures import overlay

# --------------------------------------------------------------------------------------------
CONF_MIN = 1.5  # keep pixels with DUSt3R confidence >= this (conf = 1 + exp(c) >= 1)
# --------------------------------------------------------------------------------------------


def write_ply(path, xyz, rgb, binary=True):
    """Write points xyz (N, 3) float with colours rgb (N, 3) uint8 as a PLY file."""
    xyz, rgb = np.asarray(xyz, np.float32).reshape(-1, 3), np.asarray(rgb, np.uint8).reshape(-1, 3)
    if len(xyz) != len(rgb):
        raise ValueError(f"{len(xyz)} points but {len(rgb)} colours")
    fmt = "binary_little_endian" if binary else "ascii"
    head = (f"ply\nformat {fmt} 1.0\ncomment SAE latent activation on a DUSt3R pointmap\n"
            f"element vertex {len(xyz)}\nproperty float x\nproperty float y\nproperty float z\n"
            "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n")
    with open(path, "wb") as f:
        f.write(head.encode("ascii"))
        if binary:
            rec = np.empty(len(xyz), dtype=[("p", "<f4", 3), ("c", "u1", 3)])
            rec["p"], rec["c"] = xyz, rgb
            f.write(rec.tobytes())
        else:
            f.write("".join(f"{a:.6g} {b:.6g} {c:.6g} {r} {g} {bl}\n"
                            for (a, b, c), (r, g, bl) in zip(xyz.tolist(), rgb.tolist())).encode("ascii"))


def read_ply(path):
    """Read a PLY written by write_ply -> (xyz (N, 3) float32, rgb (N, 3) uint8)."""
    with open(path, "rb") as f:
        head = []
        while not head or head[-1] != "end_header":
            head.append(f.readline().decode("ascii").strip())
        n = int(next(h.split()[2] for h in head if h.startswith("element vertex")))
        if "format binary_little_endian 1.0" in head:
            rec = np.frombuffer(f.read(), dtype=[("p", "<f4", 3), ("c", "u1", 3)], count=n)
            return rec["p"].copy(), rec["c"].copy()
        vals = np.loadtxt(f, ndmin=2, max_rows=n) if n else np.zeros((0, 6))
        return vals[:, :3].astype(np.float32), vals[:, 3:6].astype(np.uint8)


def real_orientation(arr, true_shape):
    """(H, W, ...) DUSt3R output in landscape tensor layout -> real orientation (H, W) = true_shape."""
    arr = np.asarray(arr)
    hw = tuple(int(v) for v in true_shape)
    return arr if arr.shape[:2] == hw else np.swapaxes(arr, 0, 1)


def latent_pointcloud(rgbs, pts, *, confs, acts, vmax, conf_min=CONF_MIN):
    """Points of both views coloured by a latent: the photo darkened where it is silent, the
    activation colour map over it where it fires (same blend as the 2-D overlays).

    All inputs per view, in the real orientation (see real_orientation): rgbs uint8 (H, W, 3),
    pts (H, W, 3) in camera 1's frame, confs (H, W) or None, acts patch maps (h, w).
    Returns xyz (N, 3), rgb (N, 3).
    """
    xyz, rgb = [], []
    for img, p, c, a in zip(rgbs, pts, confs, acts):
        col = overlay((np.asarray(img) * 0.6).astype(np.uint8), a, vmax)  # darker photo, bright activations
        keep = np.isfinite(np.asarray(p)).all(-1) & (np.asarray(c) >= conf_min if c is not None else True)
        xyz.append(np.asarray(p)[keep])
        rgb.append(col[keep])
    return np.concatenate(xyz), np.concatenate(rgb)
