"""Layer probes (analysis/probes.py) on built-in scenes with a planted model whose EXACT layer carries the
ground-truth geometry and whose NOISE layer carries Gaussian noise, plus a run on random-tiny DUSt3R."""
import numpy as np
import pytest
import torch

from analysis import figures, probes
from data import make_dataset
from models.dust3r import HookOutput
from models.loading import load_dust3r

RES = 96  # 6x6 patch grid: fast to render, enough tokens for the statistics
P = 16
EXACT, NOISE = "enc_blocks.0", "enc_blocks.1"  # the planted model's two layers (hook names carry both views)


class PlantedModel:
    """forward_hooks only. EXACT = the patch's normalised ground-truth points (view 1's frame) followed by
    random Fourier features of the patch's mean point (cosine ~ a Gaussian kernel in 3D, so mutual nearest
    neighbours are 3D neighbours); NOISE = i.i.d. Gaussian tokens."""

    patch_size = P
    hook_points = [EXACT, NOISE]

    def __init__(self, n_freq=128, sigma=0.05, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.freq = torch.randn(3, n_freq, generator=g, dtype=torch.float64) / sigma
        self.noise = torch.Generator().manual_seed(seed + 1)

    def forward_hooks(self, view1, view2, hooks):
        rows, _ = probes.patch_targets(view1, view2, P)  # [(B, N, p*p*3)]
        toks = {}
        exact = []
        for r in rows:
            mean = r.double().reshape(*r.shape[:2], P * P, 3).mean(2)  # (B, N, 3)
            phase = mean @ self.freq
            rff = torch.cat([phase.cos(), phase.sin()], -1) * 10  # dominates the cosine over the raw points
            exact.append(torch.cat([r.double(), rff], -1).float())
        toks[EXACT] = tuple(exact)
        toks[NOISE] = tuple(torch.randn(*r.shape[:2], 64, generator=self.noise) for r in rows)
        grids = probes._grids(view1, view2, P)
        return HookOutput(toks, *grids)


@pytest.fixture(scope="module")
def planted_result():
    train = make_dataset("builtin", resolution=RES, split="train", n_scenes=4)
    val = make_dataset("builtin", resolution=RES, split="val", n_scenes=2)
    return probes.probe_sweep(PlantedModel(), train, val, [EXACT, NOISE], n_train=18, n_val=12, batch_size=6,
                              log=lambda *_: None)


def test_exact_features_are_near_perfect(planted_result):
    row = planted_result["rows"][0]
    c = row["correspondence"]
    assert row["layer"] == EXACT and c["n_gt_matches"] > 100
    assert c["precision_within_1"] > 0.95 and c["recall_within_1"] > 0.7
    assert c["precision_exact"] > 0.5
    pos = planted_result["baselines"]["position_err"]
    assert min(pos) > 0.1  # the position-only null is far from perfect on these rooms
    for v in (1, 2):  # fewer fit rows (18 pairs x 36) than features (1024): the ridge leaves a little error
        assert row[f"probe_err_view{v}"] < min(0.03, 0.1 * pos[v - 1])


def test_noise_features_are_at_chance(planted_result):
    row = planted_result["rows"][1]
    c, null = row["correspondence"], row["correspondence_shuffled"]
    assert c["precision_within_1"] < 0.35 and abs(c["precision_within_1"] - null["precision_within_1"]) < 0.1
    assert c["precision_exact"] < 0.1
    pos = planted_result["baselines"]["position_err"]
    for v in (1, 2):  # no better than knowing where the token sits
        assert row[f"probe_err_view{v}"] > 0.9 * pos[v - 1]


def test_match_score_counts():
    s = probes.MatchScore()
    gt = np.array([0, 5, -1, 7])  # view-2 grid width 4: 5 = (1, 1), 7 = (1, 3)
    pred = np.array([0, 0, 3, -1])  # exact; Chebyshev 1 from 5; unmatched patch; no prediction
    s.update(pred, gt, 4)
    r = s.result()
    assert (r["n_gt_matches"], r["n_predicted"], r["n_pred_unmatched"]) == (3, 2, 1)
    assert r["precision_exact"] == 0.5 and r["precision_within_1"] == 1.0
    assert r["recall_exact"] == pytest.approx(1 / 3) and r["recall_within_1"] == pytest.approx(2 / 3)


def test_mutual_nn_and_linear_probe():
    f = torch.randn(10, 6, dtype=torch.float64)
    perm = torch.randperm(10)
    assert (probes.mutual_nn(f, f[perm]) == torch.argsort(perm)).all()
    x = torch.randn(500, 6, dtype=torch.float64)
    W, b = torch.randn(6, 4, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    offset = torch.randn(5, 4, dtype=torch.float64)  # a target part that depends on the grid position only
    pos = torch.arange(500) % 5
    y = x @ W + b + offset[pos]
    pr = probes.LinearProbe(6, 4, n_pos=5)
    pr.update(x[:250], y[:250], pos[:250])
    pr.update(x[250:], y[250:], pos[250:])
    pr.solve(ridge=0.0)
    grid = x.reshape(100, 5, 6)  # token n of each item sits at position n
    assert torch.allclose(pr.predict(grid).double(), y.reshape(100, 5, 4), atol=1e-4)
    assert torch.allclose(pr.m, offset + b + (x @ W).reshape(100, 5, 4).mean(0), atol=1e-9)  # the null
    assert torch.allclose(pr.W, W, atol=1e-9) and torch.allclose(pr.c, offset + b, atol=1e-9)


def test_layers_parse_and_order():
    model = load_dust3r("random-tiny", landscape_only=True)
    layers = probes.default_layers(model.hook_points)
    assert "dec_blocks*.1" in layers and not any(name.startswith("dec_blocks2") for name in layers)
    sub = ["enc_blocks.0.attn", "enc_blocks.0.mlp", "enc_blocks.0", "dec_blocks.0.cross_attn",
           "dec_blocks2.0.cross_attn"]
    assert probes.default_layers(sub) == ["enc_blocks.0.attn", "enc_blocks.0", "dec_blocks*.0.cross_attn"]
    assert probes.parse_layers("dec_blocks.1, enc_blocks.0,enc_norm", model.hook_points) == [
        "enc_blocks.0", "enc_norm", "dec_blocks.1"]
    with pytest.raises(ValueError, match="enc_blocks.9"):
        probes.parse_layers("enc_blocks.9", model.hook_points)


def test_sweep_on_random_tiny(tmp_path):
    model = load_dust3r("random-tiny", landscape_only=True)
    train = make_dataset("builtin", resolution=RES, split="train", n_scenes=1)
    val = make_dataset("builtin", resolution=RES, split="val", n_scenes=1)
    layers = probes.parse_layers("all", model.hook_points)
    res = probes.probe_sweep(model, train, val, layers, n_train=9, n_val=3, batch_size=5, log=lambda *_: None)
    assert [r["layer"] for r in res["rows"]] == layers and res["n_val"] == 3
    for r in res["rows"]:
        assert 0 <= r["correspondence"]["precision_within_1"] <= 1 and np.isfinite(r["probe_err_view2"])
        assert r["n_fit_tokens"] == [9 * 36, 9 * 36] and r["n_val_pixels"] == [3 * RES * RES] * 2
    figures.probe_figure(res, tmp_path / "probes.png", "random-tiny")
    assert (tmp_path / "probes.png").stat().st_size > 10_000


def test_summary_names_nulls_and_every_layer(planted_result):
    md = probes.probe_summary(planted_result, dict(checkpoint="planted", dataset="builtin", resolution=RES))
    assert f"`{EXACT}`" in md and f"`{NOISE}`" in md and "shuffled" in md and "position only" in md
    assert md.count("\n| `") == 2


@pytest.mark.slow  # an end-to-end run of the script
def test_probe_mode_of_analyze_results(tmp_path):
    import json
    import os
    import subprocess
    import sys
    from PIL import Image
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = [sys.executable, "analyze_results.py", "--mode=probe", "--checkpoint=random-tiny", f"--resolution={RES}",
           "--hooks=dec_blocks*.1,enc_blocks.0", "--n_pairs=3", "--probe_train_pairs=6", "--batch_size=3",
           "--device=cpu", f"--probe_dir={tmp_path}"]
    out = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads((tmp_path / "probes.json").read_text())
    assert [r["layer"] for r in res["rows"]] == ["enc_blocks.0", "dec_blocks*.1"]  # forward order
    assert res["n_train"] == 6 and res["n_val"] == 3 and res["config"]["hooks"] == "dec_blocks*.1,enc_blocks.0"
    assert Image.open(tmp_path / "probes.png").size == (1200, 450)
    assert "| `dec_blocks*.1` |" in (tmp_path / "summary.md").read_text()
    bad = subprocess.run(cmd[:4] + ["--hooks=enc_blocks.7", "--device=cpu", f"--probe_dir={tmp_path}"], cwd=root,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "enc_blocks.7" in bad.stderr
