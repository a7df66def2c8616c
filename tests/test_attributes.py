"""Per-latent 3D attributes (analysis/attributes.py): exact planes, then planted latents on built-in scenes."""
import numpy as np
import pytest
import scipy.sparse as sp

from analysis import attributes as at, figures
from data import make_dataset

K = np.array([[60.0, 0, 32], [0, 60.0, 24], [0, 0, 1]])


def plane_depth(normal, offset, H=48, W=64):
    """Depth of the plane {X: normal . X = offset} seen by a camera with intrinsics K."""
    u, v = np.meshgrid(np.arange(W), np.arange(H))
    rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones((H, W))], -1)
    return offset / (rays @ np.asarray(normal))


def test_plane_normals_edges_and_planarity():
    n = np.array([0.3, -0.5, -1.0])
    n /= np.linalg.norm(n)  # facing the camera (n . X < 0 for points in front)
    depth = plane_depth(n, -2.0)
    assert (depth > 0).all()
    X, normals, edge, valid = at.pixel_geometry(depth, K)
    assert valid.all() and not edge.any()
    assert np.allclose(normals, n, atol=1e-6)
    g = at.token_geometry(dict(depthmap=depth, camera_intrinsics=K, true_shape=np.array(depth.shape)), patch=16)
    assert g["valid"].all() and g["planar"].all() and np.allclose(g["normal"], n, atol=1e-6)
    # a step: the right half 30 % farther -> a column of edge pixels, not planar there, distance grows away from it
    step = depth.copy()
    step[:, 40:] *= 1.3
    _, _, edge, _ = at.pixel_geometry(step, K)
    assert edge[:, 38:42].all(0).any() and not edge[:, :37].any() and not edge[:, 43:].any()
    g = at.token_geometry(dict(depthmap=step, camera_intrinsics=K, true_shape=np.array(step.shape)), patch=16)
    grid = g["planar"].reshape(3, 4)
    assert not grid[:, 2].any() and grid[:, [0, 1, 3]].all()
    assert g["edge_dist"].reshape(3, 4)[0, 0] > g["edge_dist"].reshape(3, 4)[0, 2]


@pytest.fixture(scope="module")
def scenes_geometry():
    ds = make_dataset("builtin", resolution=96, split="val", n_scenes=2)
    return at.stack_geometry([at.token_geometry(v) for i in range(0, 18, 2) for v in ds[i]])


def test_planted_latents(scenes_geometry):
    g = scenes_geometry
    T = len(g["valid"])
    assert g["valid"].all() and 0.3 < g["planar"].mean() < 0.9
    z = np.zeros((T, 6))
    z[:, 0] = np.clip(-g["log_rel_depth"], 0, None)  # fires on tokens nearer than the view's median depth
    z[:, 1] = g["planar"]  # planes only
    z[:, 2] = ~g["planar"]  # everything else
    z[:, 3] = g["normal"][:, 1] < -0.8  # floors: normal points up (-y in the camera frame)
    z[:, 5] = 2.0 * (g["edge_dist"] < 0.5)  # near depth edges; latent 4 never fires
    cols, info = at.latent_attributes(sp.csr_matrix(z), g)
    assert info["n_tokens"] == T and info["planar_base"] == pytest.approx(g["planar"].mean())
    assert cols["corr_depth"][0] < -0.5
    assert cols["planar_share"][1] == 1.0 and cols["planar_share"][2] == 0.0
    assert cols["corr_normal_y"][3] < -0.5 and abs(cols["corr_normal_x"][3]) < 0.3
    assert np.isnan(cols["corr_depth"][4]) and np.isnan(cols["planar_share"][4])
    assert cols["corr_edge"][5] < -0.3
    dense, _ = at.latent_attributes(z, g)  # sparse and dense codes agree
    for k in at.COLUMNS:
        assert np.allclose(cols[k], dense[k], equal_nan=True)
    with pytest.raises(ValueError, match="tokens"):
        at.latent_attributes(z[:-1], g)


def test_pair_attributes_null_and_figure(scenes_geometry, tmp_path):
    """Codes that copy a pair's own geometry beat the null built from the next pair's geometry."""
    from types import SimpleNamespace
    g = scenes_geometry
    n = 36  # tokens per view at 96 px
    geoms = [[{k: v[i * 2 * n + j * n:i * 2 * n + (j + 1) * n] for k, v in g.items()} for j in range(2)]
             for i in range(len(g["valid"]) // (2 * n))]
    z = [sp.csr_matrix(np.stack([np.clip(-gv["log_rel_depth"], 0, None), gv["planar"]], 1)) for gv in
         (at.stack_geometry([p[0] for p in geoms]), at.stack_geometry([p[1] for p in geoms]))]
    cols, null, info = at.pair_attributes(SimpleNamespace(z1=z[0], z2=z[1]), geoms)
    # the null keeps each image's layout (floor near and low, walls far and high), so it is far from 0 here: the
    # part of the correlation that the position in the image explains
    assert cols["corr_depth"][0] < -0.5 and abs(null["corr_depth_null"][0]) < abs(cols["corr_depth"][0]) - 0.15
    assert cols["planar_share"][1] == 1.0 and null["planar_share_null"][1] < 0.9
    assert set(info["null_abs_r_q95"]) == {k for k in at.COLUMNS if k.startswith("corr_")}
    lines = at.summary_lines(info, cols)
    assert any("Null (each pair's codes" in line for line in lines)
    figures.attributes_figure(cols, null, info, tmp_path / "a.png", "planted")
    assert (tmp_path / "a.png").stat().st_size > 5000
