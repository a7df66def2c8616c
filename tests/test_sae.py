"""Tests for models/sae.py: dictionary recovery, sparsity invariants, constraints, save/load, metrics.

Run: python -m pytest -q tests/test_sae.py   (about 15 s on a 2-core CPU)
"""
import json

import pytest
import torch
import torch.nn.functional as F

from models.sae import ENC_INIT_NORM, FVU, RELU_BENC_LR_SCALE, SAE, FiringStats, SAEConfig, l0

D, A, K_TRUE = 32, 64, 3      # synthetic data: D dims, A unit atoms, K_TRUE active atoms per token


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The CI/dev machine has 2 shared cores; oversubscribed OpenMP threads slow these tiny ops 10x."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make_atoms(seed=0):
    g = torch.Generator().manual_seed(seed)
    atoms = torch.randn(A, D, generator=g)
    return atoms / atoms.norm(dim=1, keepdim=True), g


def sample(atoms, g, n):
    """Tokens = K_TRUE atoms with coefficients in [0.5, 1.5], plus an offset (non-zero mean)."""
    idx = torch.rand(n, A, generator=g).argsort(1)[:, :K_TRUE]
    codes = torch.zeros(n, A).scatter_(1, idx, torch.rand(n, K_TRUE, generator=g) + 0.5)
    return codes @ atoms + 3.0


def train(sae, atoms, g, steps, lr=3e-3, batch=256):
    opt = torch.optim.Adam(sae.parameters(), lr=lr)
    for _ in range(steps):
        out = sae(sample(atoms, g, batch))
        opt.zero_grad()
        out.loss.backward()
        sae.remove_parallel_grad()
        opt.step()
        sae.normalize_decoder()
        sae.update_dead_stats(out.fired, len(out.recon))
    return out


def fresh(kind="topk", seed=0, **kw):
    torch.manual_seed(seed)
    atoms, g = make_atoms(seed)
    kw = {"k": K_TRUE, "aux_k": 16, "dead_tokens": 256 * 20, **kw}
    sae = SAE(SAEConfig(d_in=D, n_latents=128, kind=kind, **kw))
    sae.init_from_sample(sample(atoms, g, 4096))
    return sae, atoms, g


def frac_recovered(sae, atoms, thresh=0.9):
    cos = atoms @ F.normalize(sae.W_dec.detach(), dim=1).T   # (A, S) cosines (relu rows are not unit)
    return (cos.max(1).values > thresh).float().mean().item()


@pytest.mark.slow  # hundreds of training steps per kind
# Matryoshka's first prefixes (8, 16 latents) must reconstruct alone, so on flat data (no coarse-to-fine
# structure) they learn blends of atoms, not atoms: a lower share, by design.
@pytest.mark.parametrize("kind,steps,kw,share", [("topk", 400, {}, 0.85), ("matryoshka", 400, {}, 0.6),
                                                 ("relu", 800, {"l1_coeff": 0.1, "l1_warmup_steps": 100}, 0.85)])
def test_recovers_most_atoms(kind, steps, kw, share):
    sae, atoms, g = fresh(kind, **kw)
    assert frac_recovered(sae, atoms) < 0.2     # random init does not already match
    out = train(sae, atoms, g, steps)
    assert frac_recovered(sae, atoms) >= share
    assert out.fvu < 0.4


def test_topk_exactly_k_nonzeros():
    sae, atoms, g = fresh("topk", k=5)
    x = sample(atoms, g, 300)
    for impl in ("fused", "dense"):
        sae.topk_impl = impl
        out = sae(x)
        assert ((out.latents != 0).sum(1) == 5).all() and out.l0 == 5.0
    assert ((sae.encode(x) != 0).sum(1) == 5).all()


def test_fused_topk_matches_dense_reference():
    sae, atoms, g = fresh("topk")
    sae.tokens_since_fired[:40] = 10 ** 9          # some dead latents so AuxK is exercised too
    x = sample(atoms, g, 200).requires_grad_()    # as when an SAE is spliced into a model that is backpropagated
    res = {}
    for impl in ("fused", "dense"):
        sae.topk_impl = impl
        sae.zero_grad()
        x.grad = None
        out = sae(x)
        out.loss.backward()
        res[impl] = (out, {n: p.grad.clone() for n, p in sae.named_parameters()} | {"x": x.grad.clone()})
    (o1, g1), (o2, g2) = res["fused"], res["dense"]
    assert torch.allclose(o1.recon, o2.recon, atol=1e-5) and torch.allclose(o1.loss, o2.loss, atol=1e-6)
    for n in g1:   # b_dec's: -W_enc @ grad b_enc in the fused backward, a sum over grad x_in in the dense one
        assert torch.allclose(g1[n], g2[n], atol=1e-6), n
    assert not isinstance(o1.codes, torch.Tensor) and isinstance(o2.codes, torch.Tensor)   # fused: sparse codes
    assert torch.equal(o1.latents, o2.latents) and torch.equal(o1.fired, o2.fired)
    assert o1.fired.sum() > 10 and not o1.fired.all()
    x_plain = x.detach()
    sae.topk_impl = "fused"
    sae.zero_grad()
    sae(x_plain).loss.backward()                   # no grad for x: the fused backward skips grad x_in
    assert torch.allclose(sae.b_dec.grad, g2["b_dec"], atol=1e-6)
    # the fused backward hands W_enc's gradient over in W_enc's own latent-major layout (strides (1, D)), so
    # autograd accumulates it without a transposing copy (two of them per step before; README Throughput)
    sae.tokens_since_fired.zero_()                 # no AuxK: W_enc's gradient comes from the fused backward alone
    grad_W, = torch.autograd.grad(sae(x_plain).loss, sae.W_enc)
    assert sae.W_enc.stride() == (1, D) and grad_W.stride() == sae.W_enc.stride()
    loaded = SAE(sae.cfg)
    loaded.load_state_dict(sae.state_dict())
    assert loaded.W_enc.stride() == (1, D)          # state-dict loads copy into the layout: resumed runs keep it


def test_bf16_autocast_runs_with_fp32_grads():
    sae, atoms, g = fresh("topk")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = sae(sample(atoms, g, 64))
    out.loss.backward()
    for p in sae.parameters():
        assert p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()
    assert out.fvu < 1.5


@pytest.mark.parametrize("rank", ["norm", "raw"])
def test_batchtopk_mean_k_in_training_threshold_at_inference(rank):
    sae, atoms, g = fresh("batchtopk", k=4, batch_rank=rank)
    out = train(sae, atoms, g, 200)
    assert out.l0 == 4.0                          # exactly B*K active over the batch ...
    assert (out.latents != 0).sum(1).float().std() > 0   # ... but not K on every token
    theta = sae.threshold.item()
    assert theta > 0
    sae.eval()
    x = sample(atoms, g, 2000)
    z = sae.encode(x)
    x_in = (x - sae.norm_mean) * sae.norm_scale - sae.b_dec
    pre = x_in @ sae.W_enc + sae.b_enc
    scale = x_in.norm(dim=1, keepdim=True) / D ** 0.5 if rank == "norm" else 1.0
    ref = torch.where(pre > theta * scale, pre, torch.zeros_like(pre)) / sae.norm_scale
    assert torch.allclose(z, ref, atol=1e-5)
    assert 2.0 < l0(z) < 8.0                      # the threshold keeps about K per token
    assert torch.allclose(sae(x).latents, z)     # eval-mode forward uses the threshold too


def test_batchtopk_norm_ranking_ignores_token_scale():
    """A token's share of the batch's B*K latents follows its direction, not its norm, under batch_rank 'norm'
    (README, "Recovery vs sparsify": raw ranking hands the large tokens most of them and learns slowly)."""
    fired = {}
    for rank in ("norm", "raw"):
        sae, atoms, g = fresh("batchtopk", k=4, batch_rank=rank)
        with torch.no_grad():
            sae.b_dec.zero_()                               # x_in = x_n: a token's scale is its x_in's
        x_n = sample(atoms, g, 512) - 3.0
        x_n[::2] *= 10.0                                    # every other token 10x larger
        out = sae((x_n / sae.norm_scale) + sae.norm_mean)   # raw input whose x_n is the above
        per_token = (out.latents != 0).sum(1).float()
        fired[rank] = per_token[::2].mean().item(), per_token[1::2].mean().item()
        assert out.l0 == 4.0                                # B*K in both
    big, small = fired["raw"]
    assert small < 0.5 and big > 7.5, fired                 # raw: the large half takes (nearly) all
    big, small = fired["norm"]
    assert abs(big - small) < 1.0, fired                    # norm: both halves ~K


def test_unit_norm_rows_and_parallel_grad_removed():
    sae, atoms, g = fresh("topk")
    out = sae(sample(atoms, g, 128))
    out.loss.backward()
    along = (sae.W_dec.grad * sae.W_dec).sum(1)
    assert along.abs().max() > 1e-6               # the raw gradient has a parallel part
    sae.remove_parallel_grad()
    assert (sae.W_dec.grad * sae.W_dec).sum(1).abs().max() < 1e-6
    train(sae, atoms, g, 20, lr=1e-2)
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(128), atol=1e-5)


@pytest.mark.parametrize("kind,kw", [("topk", {}), ("batchtopk", {}), ("batchtopk", {"batch_rank": "raw"}),
                                     ("matryoshka", {}), ("relu", {})])
def test_save_load_identical_on_raw_activations(tmp_path, kind, kw):
    sae, atoms, g = fresh(kind, **kw)
    train(sae, atoms, g, 30)
    sae.eval()
    x = sample(atoms, g, 500) * 7.0 - 2.0          # arbitrary raw scale and offset
    sae.init_from_sample(x)  # non-trivial mu, s: fold must absorb them
    assert abs(sae.norm_scale.item() - 1.0) > 0.1 and sae.norm_mean.abs().max() > 1.0
    sae.save(tmp_path / "a")
    sae.save(tmp_path / "b", fold=False)
    a, b = SAE.load(tmp_path / "a"), SAE.load(tmp_path / "b")
    assert a.norm_scale.item() == 1.0 and a.norm_mean.abs().max() == 0.0
    rows = sae.W_dec.detach().norm(dim=1)                   # (S,) relu's rows are free: fold makes them unit
    assert (rows - 1).abs().max() > 0.5 if kind == "relu" else torch.allclose(rows, torch.ones(128), atol=1e-5)
    assert torch.allclose(a.W_dec.norm(dim=1), torch.ones(128), atol=1e-5)
    with torch.no_grad():
        for m in (a, b):
            m.eval()
            assert torch.allclose(m(x).recon, sae(x).recon, atol=1e-4, rtol=1e-5)
            # each latent's contribution z_i ||w_i|| is what folding keeps (= z_i for unit rows)
            assert torch.allclose(m.encode(x) * m.W_dec.norm(dim=1), sae.encode(x) * rows, atol=1e-5, rtol=1e-5)
            assert torch.allclose(m.decode(m.encode(x)), sae(x).recon, atol=1e-4, rtol=1e-5)


def test_files_without_batch_rank_load_as_raw(tmp_path):
    """SAEs saved before batch_rank existed learnt their threshold under raw ranking: they keep it."""
    sae, _, _ = fresh("batchtopk")
    sae.save(tmp_path)
    meta = json.loads((tmp_path / "sae_config.json").read_text())
    del meta["config"]["batch_rank"]
    (tmp_path / "sae_config.json").write_text(json.dumps(meta))
    assert SAE.load(tmp_path).cfg.batch_rank == "raw"
    with pytest.raises(ValueError, match="batch_rank"):
        SAEConfig(d_in=D, n_latents=128, kind="batchtopk", batch_rank="token")


def test_load_validates_config(tmp_path):
    sae, _, _ = fresh("topk")
    sae.save(tmp_path)
    meta = json.loads((tmp_path / "sae_config.json").read_text())
    meta["config"]["bogus"] = 1
    (tmp_path / "sae_config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="sae_config.json.*bogus"):
        SAE.load(tmp_path)
    del meta["config"]["bogus"]
    meta["config"]["n_latents"] = 64             # weights on disk have 128 latents
    (tmp_path / "sae_config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="sae.safetensors.*shape"):
        SAE.load(tmp_path)


def test_fvu_centred_streaming_float64():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1000, 16, generator=g) * 0.1 + 5.0       # mean far from zero
    f = FVU(); f.update(x, x)
    assert f.compute() == 0.0
    f = FVU(); f.update(x, x.mean(0, keepdim=True).expand_as(x))
    assert abs(f.compute() - 1.0) < 1e-9
    x_hat = x + torch.randn(1000, 16, generator=g) * 0.05
    f = FVU()
    for chunk in range(0, 1000, 300):                         # streaming == one shot
        f.update(x[chunk:chunk + 300], x_hat[chunk:chunk + 300])
    xd, xhd = x.double(), x_hat.double()
    ref = ((xd - xhd) ** 2).sum() / ((xd - xd.mean(0)) ** 2).sum()
    assert abs(f.compute() - ref.item()) < 1e-9
    assert 0.1 < f.compute() < 0.5                            # variance about zero would give ~1e-4


def test_auxk_only_when_dead_latents():
    sae, atoms, g = fresh("topk")
    x = sample(atoms, g, 128)
    out = sae(x)
    assert out.aux_loss.item() == 0.0 and not sae.dead_mask().any()
    sae.tokens_since_fired[:50] = sae.cfg.dead_tokens
    out = sae(x)
    assert out.aux_loss.item() > 0
    with torch.no_grad():   # AuxK as in Gao et al. 2024: normalised MSE of the residual, no b_dec in e^
        x_n = (x - sae.norm_mean) * sae.norm_scale
        e = x_n - ((out.recon - sae.norm_mean) * sae.norm_scale)
        pre = (x_n - sae.b_dec) @ sae.W_enc[:, :50] + sae.b_enc[:50]
        v, i = pre.topk(16, dim=1)
        e_hat = torch.einsum("bk,bkd->bd", v.relu(), sae.W_dec[:50][i])
        ref = ((e_hat - e) ** 2).sum() / ((e - e.mean(0)) ** 2).sum()
    assert torch.allclose(out.aux_loss, ref, rtol=1e-4)
    sae.zero_grad()
    (sae.cfg.aux_coeff * out.aux_loss).backward()
    assert sae.W_enc.grad[:, 50:].abs().max() == 0 and sae.W_enc.grad[:, :50].abs().max() > 0


def test_dead_latents_counted_in_tokens():
    sae, _, _ = fresh("topk", dead_tokens=100)
    z = torch.zeros(30, 128)
    z[:, 0] = 1.0                                  # latent 0 fires on every batch
    for i in range(3):
        sae.update_dead_stats(z.any(0), len(z))
    assert sae.dead_mask().sum() == 0              # 90 tokens < 100
    sae.update_dead_stats(z[:10].any(0), 10)       # a smaller batch: counts tokens, not steps
    assert sae.dead_mask().sum() == 127 and not sae.dead_mask()[0]


def test_l1_warmup_and_firing_stats():
    sae, atoms, g = fresh("relu", l1_coeff=0.2, l1_warmup_steps=10)
    out = sae(sample(atoms, g, 64))                # first training forward: weight = coeff / 10
    assert torch.allclose(out.loss, out.recon_mse + 0.02 * out.l1) and out.l1 > 0
    z = torch.zeros(1000, 5)
    z[:500, 0], z[:5, 1], z[0, 2] = 1.0, 2.0, -1.0
    st = FiringStats(5); st.update(z[:400]); st.update(z[400:])
    assert torch.allclose(st.frequency(), torch.tensor([0.5, 0.005, 0.001, 0, 0], dtype=torch.float64))
    assert st.n_dense() == 1 and st.n_dead() == 2 and st.histogram()[0].sum() == 5
    assert abs(st.frequency().sum().item() - l0(z)) < 1e-6


def test_init_normalisation_and_geometric_median():
    g = torch.Generator().manual_seed(0)
    c = torch.randn(D, generator=g) * 5
    x = c + 0.1 * torch.randn(1000, D, generator=g)
    x = torch.cat([x, c + 100.0 * torch.eye(D)[:1].expand(50, D)])   # 5 % far outliers
    sae = SAE(SAEConfig(d_in=D, n_latents=64, k=4))
    sae.init_from_sample(x)
    x_n = (x - sae.norm_mean) * sae.norm_scale
    assert abs(x_n.norm(dim=1).mean().item() - D ** 0.5) < 1e-3
    assert torch.allclose(x_n.mean(0), torch.zeros(D), atol=1e-4)
    centre = sae.b_dec.detach() / sae.norm_scale + sae.norm_mean      # b_dec in raw space
    assert (centre - c).norm() < 0.2 < (x.mean(0) - c).norm()         # median, not mean
    assert torch.allclose(sae.W_enc, sae.W_dec.T * ENC_INIT_NORM)    # tied, shrunk (models/sae.py ENC_INIT_NORM)

@pytest.mark.parametrize("kind", ["topk", "relu"])
def test_relu_encoder_biases_step_faster_and_nothing_else_does(kind):
    """SAE.param_groups puts relu's b_enc in its own group with lr_scale RELU_BENC_LR_SCALE, and sae_step gives
    each group lr * lr_scale. Adam's first step moves every parameter with a gradient by exactly its lr."""
    from training.step import sae_step
    sae, atoms, g = fresh(kind)
    opt = torch.optim.Adam(sae.param_groups(), lr=1.0)
    before = {n: p.detach().clone() for n, p in sae.named_parameters()}
    sae_step(sae, opt, x=sample(atoms, g, 256), lr=1e-4, grad_clip=0.0, world_size=1)
    moved = {n: (p.detach() - before[n]).abs().max().item() for n, p in sae.named_parameters()}
    fast = RELU_BENC_LR_SCALE if kind == "relu" else 1.0
    assert len(opt.param_groups) == (2 if kind == "relu" else 1)
    assert moved["b_enc"] == pytest.approx(1e-4 * fast, rel=1e-3), moved
    for n in ("W_enc", "b_dec") + (("W_dec",) if kind == "relu" else ()):   # topk's W_dec is renormalised after
        assert moved[n] == pytest.approx(1e-4, rel=1e-3), (n, moved)


def _dead_stats_worker(rank, port, out_dir):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.manual_seed(0)
    sae = SAE(SAEConfig(d_in=4, n_latents=6, k=1, dead_tokens=50))
    z = torch.zeros(10 * (rank + 1), 6)        # rank 0: 10 tokens, rank 1: 20 tokens per step
    z[:, rank] = 1.0                           # latent 0 fires on rank 0 only, latent 1 on rank 1 only
    for _ in range(2):
        sae.update_dead_stats(z.any(0), len(z))
    (out_dir / f"rank{rank}.json").write_text(json.dumps(sae.tokens_since_fired.tolist()))
    dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes with a gloo process group
def test_dead_stats_shared_across_ranks(tmp_path):
    import socket
    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_dead_stats_worker, args=(port, tmp_path), nprocs=2)
    for r in (0, 1):   # 2 steps x 30 tokens over both ranks; latents 0, 1 fired somewhere
        assert json.loads((tmp_path / f"rank{r}.json").read_text()) == [0, 0, 60, 60, 60, 60]


# ----- Matryoshka BatchTopK -----
def test_matryoshka_widths_default_and_validated():
    assert SAEConfig(d_in=D, n_latents=128, kind="matryoshka").matryoshka_widths == (8, 16, 32, 64, 128)
    assert SAEConfig(d_in=D, n_latents=128, kind="matryoshka", matryoshka_widths=[32, 128]).matryoshka_widths == (32, 128)
    for bad in ([32, 16, 128], [32, 64], [0, 128], [64, 64, 128]):
        with pytest.raises(ValueError, match="matryoshka_widths"):
            SAEConfig(d_in=D, n_latents=128, kind="matryoshka", matryoshka_widths=bad)
    with pytest.raises(ValueError, match="matryoshka_widths"):
        SAEConfig(d_in=D, n_latents=128, kind="topk", matryoshka_widths=[64, 128])


@pytest.mark.parametrize("train_mode", [True, False])
def test_matryoshka_loss_is_mean_of_nested_prefix_losses(train_mode):
    sae, atoms, g = fresh("matryoshka", k=4, matryoshka_widths=[8, 40, 128])
    sae.threshold.fill_(0.5)
    sae.train(train_mode)
    x = sample(atoms, g, 300)
    out = sae(x)
    f = out.latents * sae.norm_scale                                   # (B, S) normalised units
    assert f.shape == (300, 128) and out.recon.shape == (300, D)
    target = (x - sae.norm_mean) * sae.norm_scale                     # (B, D)
    mses = [(target - f[:, :m] @ sae.W_dec[:m] - sae.b_dec).pow(2).mean() for m in (8, 40, 128)]
    assert len({round(m.item(), 4) for m in mses}) == 3                # three different terms (untrained)
    assert torch.allclose(out.loss, torch.stack(mses).mean(), rtol=1e-5)   # no dead latents: no AuxK
    assert torch.allclose(out.recon_mse, mses[2], rtol=1e-5)          # the reported MSE is the full dictionary's
    if train_mode:
        assert out.l0 == 4.0                                          # BatchTopK: B*K active over the batch


def test_matryoshka_one_prefix_equals_batchtopk():
    a, atoms, g = fresh("matryoshka", matryoshka_widths=[128])
    b, _, _ = fresh("batchtopk")
    b.load_state_dict(a.state_dict())
    x = sample(atoms, g, 200)
    grads = []
    for sae in (a, b):
        out = sae(x)
        out.loss.backward()
        grads.append((out.loss.detach(), [p.grad.clone() for p in sae.parameters()]))
    assert torch.allclose(grads[0][0], grads[1][0], rtol=1e-6)
    for ga, gb in zip(grads[0][1], grads[1][1]):
        assert torch.allclose(ga, gb, atol=1e-7)


def test_matryoshka_first_prefix_alone_reconstructs_after_training():
    """The point of the method: the first 16 latents alone explain the data much better than the first 16
    latents of a plain BatchTopK SAE trained the same way (those are an arbitrary slice of its dictionary)."""
    res = {}
    for kind, kw in (("matryoshka", {"matryoshka_widths": [16, 128]}), ("batchtopk", {})):
        sae, atoms, g = fresh(kind, **kw)
        train(sae, atoms, g, 300)
        x = sample(atoms, g, 2000)
        f = sae(x).latents * sae.norm_scale
        target = (x - sae.norm_mean) * sae.norm_scale
        res[kind] = ((target - f[:, :16] @ sae.W_dec[:16] - sae.b_dec).pow(2).sum()
                     / (target - target.mean(0)).pow(2).sum()).item()
    assert res["matryoshka"] < 0.8 * res["batchtopk"], res


@pytest.mark.parametrize("kind", ["topk", "matryoshka"])
def test_token_weight_fits_each_tokens_relative_error(kind):
    """token_weight: the reconstruction term is mean_B(D / ||x_n - b_dec||^2 * mean_D(err^2)) (per prefix for
    Matryoshka); recon_mse and fvu stay unweighted; the default leaves the loss as it was."""
    sae, atoms, g = fresh(kind, token_weight=True)
    x = sample(atoms, g, 256)
    x[::2] = 3.0 + (x[::2] - 3.0) * 5.0                          # norms spread 5x: the weights matter
    out = sae(x)
    x_n, x_in = sae._pre(x)
    w = D / x_in.detach().pow(2).sum(1)
    if kind == "topk":
        ref = ((x_n - ((out.recon - sae.norm_mean) * sae.norm_scale)).pow(2).mean(1) * w).mean()
    else:   # prefixes from the dense latents, as the class docstring defines them
        f = out.latents * sae.norm_scale
        ref = torch.stack([((f[:, :m] @ sae.W_dec[:m] + sae.b_dec - x_n).pow(2).mean(1) * w).mean()
                           for m in sae.cfg.matryoshka_widths]).mean()
    assert torch.allclose(out.loss - sae.cfg.aux_coeff * out.aux_loss, ref, rtol=1e-4, atol=1e-6)
    sae.cfg.token_weight = False
    plain = sae(x)
    assert torch.allclose(plain.recon_mse, out.recon_mse) and not torch.allclose(plain.loss, out.loss)
