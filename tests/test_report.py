"""analysis/report.py: the one JSON cleaner and the layer comparison in forward order."""
import json

import numpy as np

from analysis.report import json_safe, write_layer_comparison


def test_json_safe_makes_plain_json():
    obj = {1: np.array([0.5, np.nan, np.inf]), "n": np.int64(3), "ok": np.bool_(True), "t": (1.0, float("nan")),
           "labels": np.array(["view-1", "neither"]), "x": np.float32(0.123456789), "none": None, "obj": object}
    out = json_safe(obj)
    assert out["1"] == [0.5, None, None] and out["n"] == 3 and out["ok"] is True and out["t"] == [1.0, None]
    assert out["labels"] == ["view-1", "neither"] and out["none"] is None and out["obj"] == str(object)
    assert type(out["x"]) is float and json.loads(json.dumps(out, allow_nan=False)) == out
    assert json_safe(np.float64(0.123456789), digits=4) == 0.1235 and json_safe(np.nan, digits=4) is None
    assert json_safe(np.array([0.123456, 2.0]), digits=2) == [0.12, 2.0]  # rounded elementwise


def test_layer_comparison_is_in_forward_order(tmp_path):
    def row(run, hook, gain):
        return dict(run=run, hook=hook, n_pairs=8, n_alive=5, n_tested=3, frac_significant_of_alive=0.4,
                    mass_weighted_gain=gain, mass_weighted_abs_va=0.1)
    rows = [row("c", "dec_blocks*.1", 0.3), row("a", "enc_blocks.11", float("nan")), row("b", "enc_norm", 0.2)]
    out = write_layer_comparison(rows, tmp_path)
    assert [r["run"] for r in out] == ["a", "b", "c"]
    assert [r["run"] for r in json.loads((tmp_path / "layers.json").read_text())] == ["a", "b", "c"]
    table = (tmp_path / "layers.md").read_text().splitlines()
    assert table[-3].startswith("| a | enc_blocks.11 | 8 | 5 | 3 | 0.400 | n/a | 0.100 | n/a")
    assert (tmp_path / "layers.png").stat().st_size > 0
