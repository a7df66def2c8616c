"""End to end: tiny training runs on a random-weight DUSt3R, then analyze_results.py on both.

Checks the files the analysis promises (README.md, section Analysing a trained SAE), their sizes and content, the
encoder anchor ((A, A) pairs give consistency 1), the appearance anchor (a `pixels` run) in the layer comparison
and the consistency section of summary.md. About 1 min on 2 idle cores.
"""
import json
import os
import re
import subprocess
import sys

import pytest
from PIL import Image

from analysis import figures
from analysis.ply import read_ply

pytestmark = pytest.mark.slow  # end-to-end runs of the scripts: deselect with -m 'not slow'

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RES = 96  # builtin scenes at 96x96: a 6x6 patch grid, fast to render
TINY = ["--checkpoint=random-tiny", "--train_tokens=2048", "--batch_size=512", "--buffer_pairs=8", "--dust3r_batch=4",
        "--eval_pairs=2", "--eval_every=100", "--num_workers=0", f"--resolution={RES}", "--expansion=4", "--k=4",
        "--init_tokens=512", "--fidelity=False", "--device=cpu"]


def _start(args):
    return subprocess.Popen([sys.executable] + args, cwd=ROOT, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def _wait(proc):
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, f"{proc.args[1]} failed:\n{out[-2000:]}\n{err[-4000:]}"
    return out


BACKGROUND_TEST = "test_train_then_analyze"  # started at session start (conftest.background)


def in_background(tmp_path):
    """The three tiny runs, in parallel, then one analysis of all three -> (out folder, analysis stdout)."""
    # the third run is the appearance anchor: the same recipe on raw pixels (both training scripts take it)
    train = [_start(["train_encoder_sae.py", *TINY, "--hook=enc_blocks.1", f"--out_dir={tmp_path}", "--run_name=enc"]),
             _start(["train_decoder_sae.py", *TINY, "--hook=dec_blocks*.1", f"--out_dir={tmp_path}", "--run_name=dec",
                     "--sae_kind=matryoshka"]),   # a Matryoshka SAE through training and analysis
             _start(["train_decoder_sae.py", *TINY, "--hook=pixels", f"--out_dir={tmp_path}", "--run_name=px"])]
    for p in train:  # the tiny runs in parallel
        _wait(p)
    out = _wait(_start(["analyze_results.py", str(tmp_path / "dec"), str(tmp_path / "enc"), str(tmp_path / "px"),
                        "--n_pairs=8", "--n_max=200", "--min_support=5", "--n_cards=4", "--n_ply=1",
                        f"--compare_dir={tmp_path / 'cmp'}", "--device=cpu"]))
    return tmp_path, out


def test_train_then_analyze(background):
    tmp_path, out = background[__name__].result()
    enc, dec, cmp_dir = tmp_path / "enc", tmp_path / "dec", tmp_path / "cmp"
    assert "layer comparison of 3 runs" in out

    for run in (enc, dec):
        n_latents = json.loads((run / "sae_config.json").read_text())["config"]["n_latents"]
        for f in ("index.html", "summary.md", "analysis.json", "latent_metrics.json"):
            assert (run / f).is_file(), f
        size = (int(figures.FIG_SIZE[0] * figures.FIG_DPI), int(figures.FIG_SIZE[1] * figures.FIG_DPI))
        for f in ("histograms.png", "consistency_gt.png", "consistency_pred.png"):
            assert Image.open(run / "figures" / f).size == size
        cards = sorted(os.listdir(run / "latents"))
        assert len(cards) == 4
        plys = []
        for k in cards:
            heat = Image.open(run / "latents" / k / "heatmap.png")
            assert heat.size == (3 * RES + 3 * figures.GAP + figures.BAR_W, RES + 2 * figures.CAPTION_H)
            assert Image.open(run / "latents" / k / "examples.png").size[0] == 2 * RES + 2 * figures.GAP + figures.BAR_W
            ply_path = run / "latents" / k / "pointcloud.ply"
            plys += [ply_path] if ply_path.exists() else []
            assert ply_path.exists() == (run / "latents" / k / "pointcloud.png").exists()  # PLY and its preview
            assert Image.open(run / "latents" / k / "causal.png").size[1] == RES + 2 * figures.CAPTION_H
        assert len(plys) == 1
        assert Image.open(plys[0].with_suffix(".png")).size == size
        xyz, rgb = read_ply(plys[0])
        assert len(xyz) > 0 and xyz.shape == rgb.shape == (len(xyz), 3)
        assert f"element vertex {len(xyz)}" in plys[0].read_bytes()[:300].decode("ascii", "replace")

        metrics = json.loads((run / "latent_metrics.json").read_text())
        assert len(metrics["jaccard"]) == len(metrics["va"]) == len(metrics["corr_depth"]) == n_latents
        md = (run / "summary.md").read_text()
        assert "## 3D attributes" in md and "## Causal effect" in md
        summary = json.loads((run / "analysis.json").read_text())
        assert summary["summary"]["n_pairs"] == 8 and summary["summary"]["n_latents"] == n_latents
        assert "8 held-out pairs" in (run / "summary.md").read_text()

        text = (run / "index.html").read_text(encoding="utf-8")
        rows = json.loads(re.search(r"id='latent-data' type='application/json'>(.*?)</script>", text, re.S).group(1))
        assert [r["latent"] for r in rows] == list(range(n_latents))  # every latent listed
        assert {"corr_depth", "corr_edge", "planar_share"} <= set(rows[0])  # 3D attributes as index columns
        refs = re.findall(r"(?:src|href)\s*=\s*['\"]([^'\"]*)['\"]", text)
        assert refs and not [r for r in refs if re.match(r"(https?:)?//", r)]  # nothing remote
        files = [r for r in refs if not r.startswith("#")]  # in-page anchors aside
        assert files and all((run / r).exists() for r in files), files  # every local picture / PLY is there
        for k in cards:
            assert f"id='latent-{k}'" in text

    # anchor: the encoder sees each view alone, so (A, A) pairs with the identity match give C = 1
    info = json.loads((enc / "analysis.json").read_text())["info"]
    assert abs(info["jaccard_identical_mass_weighted"] - 1) < 1e-5
    assert Image.open(cmp_dir / "layers.png").size == size
    table = (cmp_dir / "layers.md").read_text()
    assert table.index("| px | pixels |") < table.index("enc_blocks.1") < table.index("dec_blocks*.1")  # forward order
    assert table.count("pixels SAE px") == 3 and "| px | pixels | 4 |" in table  # the anchor at the same k, excess
    summary = (enc / "summary.md").read_text()
    assert "Against the appearance anchor" in summary and "Controls on the same pairs" in summary
