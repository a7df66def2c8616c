"""analysis/ply.py: latent-coloured point clouds, binary and ASCII PLY round trips, orientation."""
import numpy as np

from analysis import ply

H_IMG, W_IMG, PATCH = 64, 96, 16  # a landscape view: 4 x 6 patch grid
GH, GW = H_IMG // PATCH, W_IMG // PATCH


def test_ply_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    rgbs = [rng.integers(0, 255, (H_IMG, W_IMG, 3), dtype=np.uint8) for _ in range(2)]
    pts = [rng.normal(size=(H_IMG, W_IMG, 3)).astype(np.float32) for _ in range(2)]
    confs = [np.full((H_IMG, W_IMG), 3.0), np.where(rng.random((H_IMG, W_IMG)) < 0.5, 1.0, 3.0)]
    acts = [np.zeros((GH, GW)), np.ones((GH, GW))]
    xyz, rgb = ply.latent_pointcloud(rgbs, pts, confs=confs, acts=acts, vmax=1.0)
    n = H_IMG * W_IMG + int((confs[1] >= ply.CONF_MIN).sum())
    assert xyz.shape == (n, 3)
    # view 1 is silent: its colours are the darkened photo; view 2 fires at vmax everywhere
    np.testing.assert_array_equal(rgb[: H_IMG * W_IMG], (rgbs[0] * 0.6).astype(np.uint8).reshape(-1, 3))
    for binary in (True, False):
        path = tmp_path / f"pc_{binary}.ply"
        ply.write_ply(path, xyz, rgb, binary=binary)
        head = open(path, "rb").read(200).decode("ascii", "replace")
        assert head.startswith("ply\n") and f"element vertex {n}" in head
        xyz2, rgb2 = ply.read_ply(path)
        assert xyz2.shape == (n, 3)
        np.testing.assert_array_equal(rgb2, rgb)
        np.testing.assert_allclose(xyz2, xyz, rtol=1e-5, atol=1e-6)
    # portrait outputs in landscape layout are turned upright
    assert ply.real_orientation(np.zeros((32, 48, 3)), (48, 32)).shape == (48, 32, 3)
