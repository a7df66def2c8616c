"""Evaluation: the Regr3D/ConfLoss pointmap loss, ground truth in view 1's frame, and the spliced
fidelity score at its two ends (a perfect reconstruction scores 1, the mean-ablation 0)."""
import math

import pytest
import torch

from data import collate_pairs, make_dataset
from models.loading import load_dust3r
from training.evaluate import CONF_ALPHA, EvalSet, LossSum, evaluate, ground_truth, log_eval
from training.hooks import hook_sources

torch.set_num_threads(1)


def test_loss_is_scale_normalised_and_confidence_weighted():
    g = torch.Generator().manual_seed(0)
    gt = [torch.randn(2, 4, 5, 3, generator=g) + 3 for _ in range(2)]
    pts = [p + 0.1 * torch.randn(p.shape, generator=g) for p in gt]
    conf = [1 + torch.rand(2, 4, 5, generator=g) for _ in range(2)]
    valid = [torch.rand(2, 4, 5, generator=g) > 0.2 for _ in range(2)]
    a, b, c = LossSum(), LossSum(), LossSum()
    a.update(pts, conf, gt, valid)
    b.update([7 * p for p in pts], conf, [0.5 * q for q in gt], valid)  # each pointmap at its own scale
    assert a.value() == pytest.approx(b.value(), rel=1e-5)
    c.update(gt, conf, gt, valid)  # no error: only the -alpha*log(conf) term is left
    expected = sum(-CONF_ALPHA * torch.log(cf[m]).double().mean().item() for cf, m in zip(conf, valid))
    assert c.value() == pytest.approx(expected, rel=1e-6)
    assert a.value() > c.value()


def test_ground_truth_is_in_view1_camera_frame():
    ds = make_dataset("builtin", split="val")
    view1, view2 = collate_pairs([ds[0]])
    (gt1, gt2), (m1, m2) = ground_truth(view1, view2)
    depth = view1["depthmap"]
    assert m1.any() and torch.allclose(gt1[..., 2][m1], depth[m1].float(), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(gt2[..., 2][m2], view2["depthmap"][m2].float(), atol=1e-2)  # other camera


class _Stub(torch.nn.Module):
    """An 'SAE' whose latents are the tokens (perfect) or whose output is a fixed vector (ablation)."""

    def __init__(self, d, const=None):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(1))
        self.cfg = type("cfg", (), {"n_latents": d})
        self.const = const

    def encode(self, x):
        return x

    def decode(self, z):
        return z if self.const is None else self.const.expand_as(z).clone()

    def dead_mask(self):
        return torch.zeros(self.cfg.n_latents, dtype=torch.bool)


@pytest.mark.parametrize("hook", ["enc_blocks.1", "dec_blocks*.0", "enc_blocks.1.attn", "dec_blocks*.1.cross_attn"])
def test_fidelity_score_ends(hook):
    model = load_dust3r("random-tiny", torch.device("cpu"), landscape_only=True)
    sources = hook_sources(hook, ("enc", "dec"))
    ev = EvalSet.from_model(model, make_dataset("builtin", split="val"), sources=sources, device=torch.device("cpu"),
                            n_pairs=2, batch_size=2)
    perfect = evaluate(_Stub(32), ev)
    assert perfect["fvu"] == pytest.approx(0, abs=1e-12)
    assert perfect["score_vs_clean"] == pytest.approx(1, abs=1e-5)
    assert perfect["score_vs_gt"] == pytest.approx(1, abs=1e-4)
    if len(ev.means) == 1:  # one hook point: decoding to its mean is exactly the mean-ablation
        mean = evaluate(_Stub(32, const=next(iter(ev.means.values()))), ev)
        assert mean["score_vs_clean"] == pytest.approx(0, abs=1e-5)
        assert mean["fvu"] == pytest.approx(1, rel=1e-3)
    else:  # two branches, two means: the pooled FVU is reported per branch too
        assert {"fvu_branch1", "fvu_branch2"} <= set(perfect)
    assert math.isfinite(perfect["L_ablate_vs_gt"]) and perfect["L_ablate_vs_clean"] > perfect["L_clean_vs_clean"]


class _Run:
    def __init__(self):
        self.records, self.lines = [], []

    def metrics(self, rec):
        self.records.append(rec)

    def log(self, line):
        self.lines.append(line)


def test_eval_log_line_shows_every_scalar_present():
    run = _Run()
    log_eval(run, 6, 1536, dict(fvu=0.25, l0=4.0, eval_tokens=784, new_metric=0.5, density_counts=[1, 2]))
    assert run.records == [dict(kind="eval", step=6, tokens=1536, fvu=0.25, l0=4.0, eval_tokens=784,
                                new_metric=0.5, density_counts=[1, 2])]
    assert run.lines == ["step 6: eval fvu 0.25 l0 4 eval_tokens 784 new_metric 0.5"]  # lists stay in metrics.jsonl
