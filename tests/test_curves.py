"""training/curves.py: the curves figure of a run without fidelity scores."""
import json
import warnings

from training.curves import plot_curves


def test_curves_without_fidelity_scores_draw_without_warnings(tmp_path):
    """A run with fidelity=False has no score_* keys: that panel gets no (empty) legend and no warning."""
    train = dict(kind="train", tokens=256, loss=1.0, recon_mse=0.5, l0=4.0)
    ev = dict(kind="eval", tokens=256, fvu=0.5, l0=4.0, dead_frac=0.1, dense_frac=0.0,
              density_edges=[-3.0, -2.0, -1.0], density_counts=[1, 2])
    with open(tmp_path / "metrics.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in (train, ev, dict(kind="data", step=1, train_bad_items=0)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plot_curves(str(tmp_path), title="no fidelity")
    assert (tmp_path / "curves.png").stat().st_size > 0
