"""models/dust3r.py against the official implementation's golden tensors (tests/fixtures/golden, copied from
the team's shared fixtures, made by naver/dust3r @4c24a6e on CPU fp32), through both loading paths."""
import argparse
import hashlib
import json
import math
import re
import shutil
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from models.dust3r import AsymmetricCroCo3DStereo
from models.loading import load_dust3r

GOLDEN = Path(__file__).parent / "fixtures" / "golden"
TOKENS_TOL = dict(rtol=1e-4, atol=1e-4)  # golden README: recommended fp32 CPU tolerances
OUTPUT_TOL = dict(rtol=1e-4, atol=1e-3)
CASES = {"linear": ["landscape_b2", "portrait_view2", "manyar_portrait_view2"],
         "dpt": ["landscape_b1", "portrait_view2", "manyar_portrait_view2"]}


# ---------------------------------------------------------------- synthetic weights (golden README's rule)
def synth_tensor(tag, key, shape):
    m = re.match(r"^(.*\.scratch\.)layer_rn\.([0-3])\.weight$", key)  # aliases share the canonical tensor
    key = f"{m.group(1)}layer{int(m.group(2)) + 1}_rn.weight" if m else key
    n = int(np.prod(shape))
    s = 2.0 * np.random.RandomState(zlib.crc32(f"{tag}/{key}".encode())).random_sample(n) - 1.0
    w = s * math.sqrt(3.0 / np.prod(shape[1:])) if len(shape) >= 2 else (1 + 0.25 * s if key.endswith(".weight") else 0.1 * s)
    w = w * 0.25 if key.endswith("dpt.head.4.weight") else w
    return torch.from_numpy(w.astype(np.float32).reshape(shape))


def sha(t):
    return hashlib.sha256(t.contiguous().numpy().astype("<f4").tobytes()).hexdigest()


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Per config: the official .pth and HF folder. The DPT ones are rebuilt from the weight rule."""
    out = {"linear": (GOLDEN / "linear/checkpoint.pth", GOLDEN / "linear/hf")}
    manifest = json.loads((GOLDEN / "dpt/weights_manifest.json").read_text())
    state = {k: synth_tensor("dust3r-golden/shared/dpt", k, v["shape"]) for k, v in manifest.items()}
    assert all(sha(state[k]) == v["sha256"] for k, v in manifest.items())  # the rule is reproduced
    d = tmp_path_factory.mktemp("dpt")
    raw = (GOLDEN / "dpt/model_args.txt").read_text().splitlines()[1]
    torch.save({"model": state, "args": argparse.Namespace(model=raw)}, d / "checkpoint.pth")
    (d / "hf").mkdir()
    shutil.copy(GOLDEN / "dpt/hf/config.json", d / "hf/config.json")
    # as safetensors' shared-tensor dedup writes it: aliases dropped, layerK_rn kept
    save_file({k: v for k, v in state.items() if ".layer_rn." not in k}, str(d / "hf/model.safetensors"))
    out["dpt"] = (d / "checkpoint.pth", d / "hf")
    return out


def load_case(config, case):
    inp = load_file(str(GOLDEN / config / case / "inputs.safetensors"))
    exp = load_file(str(GOLDEN / config / case / "expected.safetensors"))
    views = [dict(img=inp[f"view{v}.img"], true_shape=inp[f"view{v}.true_shape"]) for v in (1, 2)]
    return views, exp


def golden_name(hook, view):
    """'enc_blocks.1' -> 'view1.enc_block_01'; both decoders' blocks are 'dec_block_XX' of their view."""
    m = re.match(r"^(enc|dec)_blocks2?\.(\d+)$", hook)
    return f"view{view}." + (f"{m.group(1)}_block_{int(m.group(2)):02d}" if m else hook)


# ---------------------------------------------------------------- golden reproduction
@pytest.mark.parametrize("path", ["pth", "hf"])
@pytest.mark.parametrize("config,case", [(c, k) for c in CASES for k in CASES[c]])
def test_golden(sources, config, case, path):
    model = load_dust3r(sources[config][path == "hf"], landscape_only=case.startswith("manyar"))
    (v1, v2), exp = load_case(config, case)
    with torch.no_grad():
        res1, res2 = model(v1, v2)
        out = model.forward_hooks(v1, v2, [h for h in model.hook_points if h.count(".") < 2])  # sub-block points: below
    n = 0
    for hook, pair in out.tokens.items():
        for view, t in zip((1, 2), pair):
            if t is not None and hook != "pixels":  # ours, not the official model's (test_pixels_hook)
                torch.testing.assert_close(t, exp[golden_name(hook, view)], **TOKENS_TOL, msg=f"{hook} view{view}")
                n += 1
    assert n == len([k for k in exp if not re.search(r"pos|pts3d|conf|head_", k)])  # every token tensor checked
    for view in (1, 2):  # positions are exact
        img = (v1 if view == 1 else v2)["img"]
        ts = (v1 if view == 1 else v2)["true_shape"]
        assert torch.equal(model.patch_embed(img, ts)[1], exp[f"view{view}.pos"])
    torch.testing.assert_close(res1["pts3d"], exp["view1.pts3d"], **OUTPUT_TOL)
    torch.testing.assert_close(res1["conf"], exp["view1.conf"], **OUTPUT_TOL)
    torch.testing.assert_close(res2["pts3d_in_other_view"], exp["view2.pts3d_in_other_view"], **OUTPUT_TOL)
    torch.testing.assert_close(res2["conf"], exp["view2.conf"], **OUTPUT_TOL)
    assert list(res2) == ["conf", "pts3d_in_other_view"]  # official key order
    # head internals where the fixture has them: linear proj output, DPT raw output
    for view, head in ((1, model.downstream_head1), (2, model.downstream_head2)):
        tok = out.tokens
        if f"view{view}.head_proj" in exp:
            torch.testing.assert_close(head.proj(tok["dec_norm"][view - 1]), exp[f"view{view}.head_proj"], **TOKENS_TOL)
        if f"view{view}.head_raw" in exp:
            blocks = [tok[f"dec_blocks{'' if view == 1 else '2'}.{i}"][view - 1] for i in range(len(model.dec_blocks) - 1)]
            dec = [tok["enc_norm"][view - 1]] + blocks + [tok["dec_norm"][view - 1]]
            with torch.no_grad():
                raw = head(dec, tuple(exp[f"view{view}.head_raw"].shape[-2:]))
            torch.testing.assert_close(raw, exp[f"view{view}.head_raw"], **TOKENS_TOL)


def test_pth_and_hf_give_identical_models(sources):
    a, b = (load_dust3r(s) for s in sources["dpt"])
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and len(sa) == 649  # aliases restored for the HF file
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


# ---------------------------------------------------------------- the three released architectures
RELEASED = {  # key counts and parameter totals of naver's three checkpoints
    "224_linear": (dict(img_size=(224, 224), head_type="linear"), 877, 532_342_784),
    "512_linear": (dict(img_size=(512, 512), head_type="linear"), 877, 532_342_784),
    "512_dpt": (dict(img_size=(512, 512), head_type="dpt"), 1009, 571_171_208),
}


@pytest.mark.parametrize("name", list(RELEASED))
def test_released_architectures(name):
    kw, n_keys, n_params = RELEASED[name]
    with torch.device("meta"):
        m = AsymmetricCroCo3DStereo(enc_depth=24, dec_depth=12, enc_embed_dim=1024, dec_embed_dim=768, enc_num_heads=16,
                                    dec_num_heads=12, pos_embed="RoPE100", patch_embed_cls="PatchEmbedDust3R",
                                    landscape_only=False, **kw)
    sd = m.state_dict()
    assert len(sd) == n_keys
    assert sum(p.numel() for p in m.parameters()) == n_params  # unique parameters (aliases counted once)
    shapes = {
        "mask_token": (1, 1, 768), "patch_embed.proj.weight": (1024, 3, 16, 16),
        "enc_blocks.23.attn.qkv.weight": (3072, 1024), "enc_blocks.0.mlp.fc1.weight": (4096, 1024),
        "enc_norm.bias": (1024,), "decoder_embed.weight": (768, 1024), "dec_blocks2.11.norm_y.weight": (768,),
        "dec_blocks.0.cross_attn.projk.weight": (768, 768), "dec_blocks.11.mlp.fc2.weight": (768, 3072),
        "dec_blocks2.5.attn.qkv.bias": (2304,), "dec_norm.weight": (768,),
    }
    if kw["head_type"] == "linear":
        shapes.update({"downstream_head1.proj.weight": (1024, 768), "downstream_head2.proj.bias": (1024,)})
    else:
        h = "downstream_head2.dpt."
        shapes.update({h + "act_postprocess.0.0.weight": (96, 1024, 1, 1), h + "act_postprocess.0.1.weight": (96, 96, 4, 4),
                       h + "act_postprocess.1.1.weight": (192, 192, 2, 2), h + "act_postprocess.3.1.weight": (768, 768, 3, 3),
                       h + "scratch.layer4_rn.weight": (256, 768, 3, 3), h + "scratch.layer_rn.3.weight": (256, 768, 3, 3),
                       h + "scratch.refinenet4.resConfUnit1.conv1.weight": (256, 256, 3, 3),
                       h + "head.0.weight": (128, 256, 3, 3), h + "head.4.weight": (4, 128, 1, 1)})
        assert sum(p.numel() for n, p in m.named_parameters() if n.startswith("downstream_head1")) == 20_201_668
    for k, shape in shapes.items():
        assert tuple(sd[k].shape) == shape, k
    assert sum(p.numel() for n, p in m.named_parameters() if n.startswith("enc_blocks.")) == 302_309_376
    assert sum(p.numel() for n, p in m.named_parameters() if n.startswith("dec_blocks2.")) == 113_439_744


# ---------------------------------------------------------------- hook API
@pytest.fixture(scope="module")
def linear():
    return load_dust3r(GOLDEN / "linear/checkpoint.pth")


def test_early_exit_matches_full_run_and_skips_the_rest(linear):
    (v1, v2), _ = load_case("linear", "landscape_b2")
    full = linear.forward_hooks(v1, v2, linear.hook_points)
    called = []
    handles = [getattr(linear, m).register_forward_hook(lambda *a, m=m: called.append(m))
               for m in ("enc_norm", "decoder_embed", "dec_norm", "downstream_head1")]
    handles.append(linear.dec_blocks2[1].register_forward_hook(lambda *a: called.append("dec_blocks2.1")))
    try:
        for hook in ("enc_blocks.1", "dec_blocks.1"):
            called.clear()
            out = linear.forward_hooks(v1, v2, [hook])
            assert list(out.tokens) == [hook]
            for a, b in zip(out.tokens[hook], full.tokens[hook]):
                assert (a is None and b is None) or torch.equal(a, b)
            if hook == "enc_blocks.1":
                assert called == []  # no enc_norm, decoder or head
            else:
                assert "dec_norm" not in called and "dec_blocks2.1" not in called and "downstream_head1" not in called
    finally:
        for h in handles:
            h.remove()
    assert full.tokens["dec_blocks.0"][1] is None and full.tokens["dec_blocks2.0"][0] is None
    assert full.tokens["enc_blocks.0"][0].shape == (2, 15, 48)  # (B, N, C), grid 3x5
    assert full.grid1.tolist() == [[3, 5], [3, 5]]


def test_grid_is_real_orientation_for_transposed_portraits():
    (v1, v2), exp = load_case("linear", "manyar_portrait_view2")
    model = load_dust3r(GOLDEN / "linear/hf", landscape_only=True)
    out = model.forward_hooks(v1, v2, ["enc_norm"])
    assert out.grid2.tolist() == [[5, 3]]  # portrait 80x48 image: 5 rows of 3 patches
    torch.testing.assert_close(out.tokens["enc_norm"][1], exp["view2.enc_norm"], **TOKENS_TOL)


def test_identity_splice_reproduces_clean_output(linear):
    (v1, v2), _ = load_case("linear", "portrait_view2")
    clean = linear(v1, v2)
    same = lambda t, v: t.clone()  # noqa: E731
    for hook in ("patch_embed", "enc_blocks.0", "enc_norm", "decoder_embed", "dec_blocks.1", "dec_blocks2.2", "dec_norm"):
        spliced = linear.forward_spliced(v1, v2, {hook: same})
        for a, b in zip(clean, spliced):
            assert all(torch.equal(a[k], b[k]) for k in a), hook
    # a real edit changes the output, and only downstream of it: view 2's branch edit leaves view 1 alone
    # at the last layer (view 1's last block read view 2's previous layer)
    zero = linear.forward_spliced(v1, v2, {"dec_blocks2.2": lambda t, v: torch.zeros_like(t)})
    assert torch.equal(zero[0]["pts3d"], clean[0]["pts3d"])
    assert not torch.allclose(zero[1]["pts3d_in_other_view"], clean[1]["pts3d_in_other_view"])


def test_pixels_hook(linear):
    """'pixels' = the raw normalised 16x16x3 patches in token order (portraits transposed back): the patch
    embedding is their affine map, and splicing them runs the conv as that map."""
    (v1, v2), _ = load_case("linear", "portrait_view2")
    out = linear.forward_hooks(v1, v2, ["pixels", "patch_embed"])
    w, b = linear.patch_embed.proj.weight, linear.patch_embed.proj.bias
    for view in range(2):
        pix = out.tokens["pixels"][view]
        assert pix.shape[-1] == 3 * 16 * 16
        torch.testing.assert_close(pix @ w.reshape(len(w), -1).T + b, out.tokens["patch_embed"][view],
                                   rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.tokens["pixels"][1][0, 1].reshape(3, 16, 16), v2["img"][0][:, :16, 16:32])
    (m1, m2), _ = load_case("linear", "manyar_portrait_view2")  # portrait delivered as a landscape tensor
    many_ar = load_dust3r(GOLDEN / "linear/hf", landscape_only=True)
    pix = many_ar.forward_hooks(m1, m2, ["pixels"]).tokens["pixels"][1]
    upright = m2["img"][0].transpose(-1, -2)  # token 1 = second patch of the upright image's first row
    torch.testing.assert_close(pix[0, 1].reshape(3, 16, 16), upright[:, :16, 16:32])
    clean = linear(v1, v2)
    spliced = linear.forward_spliced(v1, v2, {"pixels": lambda t, v: t.clone()})
    for a, c in zip(clean, spliced):
        for k in a:
            torch.testing.assert_close(a[k], c[k], rtol=1e-4, atol=1e-4)
    dark = linear.forward_spliced(v1, v2, {"pixels": lambda t, v: torch.full_like(t, -1.0)})
    assert not torch.allclose(dark[0]["pts3d"], clean[0]["pts3d"])


def test_splice_passes_gradients(linear):
    (v1, v2), _ = load_case("linear", "landscape_b2")
    delta = torch.zeros(48, requires_grad=True)
    seen = []
    with torch.enable_grad():
        res1, _ = linear.forward_spliced(v1, v2, {"enc_blocks.0": lambda t, v: (seen.append(v), t + delta)[1]})
        res1["pts3d"].sum().backward()
    assert seen == [1, 2] and delta.grad is not None and delta.grad.abs().sum() > 0


def test_same_image_in_both_views_gives_identical_encoder_tokens(linear):
    (v1, _), _ = load_case("linear", "landscape_b2")
    out = linear.forward_hooks(v1, dict(v1), ["enc_blocks.0", "enc_norm"])
    for hook in out.tokens:
        assert torch.equal(*out.tokens[hook])


def test_unknown_hook_point_is_an_error(linear):
    (v1, v2), _ = load_case("linear", "landscape_b2")
    with pytest.raises(KeyError, match="enc_blocks.0..1"):
        linear.forward_hooks(v1, v2, ["enc_blocks.7"])


def test_bf16_autocast_keeps_heads_fp32(linear):
    (v1, v2), exp = load_case("linear", "landscape_b2")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        res1, res2 = linear(v1, v2)
    assert res1["pts3d"].dtype == torch.float32
    rel = (res1["pts3d"] - exp["view1.pts3d"]).norm() / exp["view1.pts3d"].norm()
    assert rel < 0.1  # bf16 trunk: close, not exact


# ---------------------------------------------------------------- sub-block hook points, encoder reuse, compile
def test_sub_block_points_match_a_manual_computation(linear):
    (v1, v2), _ = load_case("linear", "landscape_b2")
    names = ["enc_blocks.0", "enc_blocks.1.attn", "enc_blocks.1.mlp", "enc_blocks.1", "dec_blocks.0", "dec_blocks2.0",
             "dec_blocks.1.attn", "dec_blocks.1.cross_attn", "dec_blocks.1.mlp", "dec_blocks.1",
             "dec_blocks2.1.attn", "dec_blocks2.1.cross_attn", "dec_blocks2.1"]
    tok = linear.forward_hooks(v1, v2, names).tokens
    with torch.no_grad():
        # encoder block 1 on both views (one batch, as the model runs them)
        x = torch.cat(tok["enc_blocks.0"])
        pos = torch.cat([linear.patch_embed(v["img"], v["true_shape"])[1] for v in (v1, v2)])
        blk, rope = linear.enc_blocks[1], linear.rope.tables(pos, 48 // linear.enc_blocks[0].attn.num_heads)
        after_attn = x + blk.attn(blk.norm1(x), rope)
        after_mlp = after_attn + blk.mlp(blk.norm2(after_attn))
        assert torch.equal(torch.cat(tok["enc_blocks.1.attn"]), after_attn)
        assert torch.equal(torch.cat(tok["enc_blocks.1.mlp"]), after_mlp)
        assert torch.equal(torch.cat(tok["enc_blocks.1"]), after_mlp)
        # decoder block 1 of both branches: each reads its own and the other branch's block-0 output
        f1, f2 = tok["dec_blocks.0"][0], tok["dec_blocks2.0"][1]
        hd = 32 // linear.dec_blocks[0].attn.num_heads
        r1, r2 = linear.rope.tables(pos[:2], hd), linear.rope.tables(pos[2:], hd)
        for name, blk, x, y, rx, ry, view in (("dec_blocks.1", linear.dec_blocks[1], f1, f2, r1, r2, 0),
                                              ("dec_blocks2.1", linear.dec_blocks2[1], f2, f1, r2, r1, 1)):
            a = x + blk.attn(blk.norm1(x), rx)
            c = a + blk.cross_attn(blk.norm2(a), blk.norm_y(y), rx, ry)
            m = c + blk.mlp(blk.norm3(c))
            assert torch.equal(tok[f"{name}.attn"][view], a) and torch.equal(tok[f"{name}.cross_attn"][view], c)
            assert torch.equal(tok[name][view], m) and tok[f"{name}.attn"][1 - view] is None
    assert torch.equal(tok["dec_blocks.1.mlp"][0], tok["dec_blocks.1"][0])  # '.mlp' is the block output
    assert not torch.equal(tok["dec_blocks.1.attn"][0], tok["dec_blocks.1.cross_attn"][0])


def test_sub_block_point_exits_early(linear):
    (v1, v2), _ = load_case("linear", "landscape_b2")
    called = []
    mods = {"dec_blocks.1.cross_attn": linear.dec_blocks[1].cross_attn, "dec_blocks2.1": linear.dec_blocks2[1],
            "enc_blocks.1.mlp": linear.enc_blocks[1].mlp, "enc_norm": linear.enc_norm}
    handles = [m.register_forward_hook(lambda *a, n=n: called.append(n)) for n, m in mods.items()]
    try:
        out = linear.forward_hooks(v1, v2, ["enc_blocks.1.attn"])
        assert called == [] and out.tokens["enc_blocks.1.attn"][1].shape == (2, 15, 48)
        out = linear.forward_hooks(v1, v2, ["dec_blocks.1.attn"])
        assert called == ["enc_blocks.1.mlp", "enc_norm"]  # no cross-attention of block 1, no branch 2 block 1
    finally:
        for h in handles:
            h.remove()


def test_sub_block_splice_identity_zero_and_gradients(linear):
    (v1, v2), _ = load_case("linear", "landscape_b2")
    clean = linear(v1, v2)
    for hook in ("enc_blocks.1.attn", "dec_blocks.1.cross_attn", "dec_blocks2.0.attn", "dec_blocks2.1.mlp"):
        same = linear.forward_spliced(v1, v2, {hook: lambda t, v: t.clone()})
        assert all(torch.equal(a[k], b[k]) for a, b in zip(clean, same) for k in a), hook
    # zeroing branch 2's stream after its last cross-attention changes view 2 only
    zero = linear.forward_spliced(v1, v2, {"dec_blocks2.2.cross_attn": lambda t, v: torch.zeros_like(t)})
    assert torch.equal(zero[0]["pts3d"], clean[0]["pts3d"])
    assert not torch.allclose(zero[1]["pts3d_in_other_view"], clean[1]["pts3d_in_other_view"])
    delta = torch.zeros(32, requires_grad=True)
    seen = []
    with torch.enable_grad():
        edit = {"dec_blocks2.1.cross_attn": lambda t, v: (seen.append(v), t + delta)[1]}
        _, res2 = linear.forward_spliced(v1, v2, edit)
        res2["pts3d_in_other_view"].sum().backward()
    assert seen == [2] and delta.grad.abs().sum() > 0


@pytest.mark.parametrize("case", ["landscape_b2", "portrait_view2"])
def test_encode_once_decode_any_pairing(linear, case):
    (a, b), _ = load_case("linear", case)
    ea, eb = linear.encode(a, b)
    assert ea.tokens.shape == linear.forward_hooks(a, b, ["enc_norm"]).tokens["enc_norm"][0].shape
    for (x, y), (ex, ey) in (((a, b), (ea, eb)), ((b, a), (eb, ea)), ((a, a), (ea, ea))):
        ref, got = linear(x, y), linear.decode(ex, ey)
        assert all(torch.equal(r[k], g[k]) for r, g in zip(ref, got) for k in r)
    hooks = ["decoder_embed", "dec_blocks.1.cross_attn", "dec_blocks2.2"]
    ref, got = linear.forward_hooks(b, a, hooks), linear.decode(eb, ea, hooks=hooks)
    assert torch.equal(ref.grid1, got.grid1) and torch.equal(ref.grid2, got.grid2)
    for h in hooks:
        assert all((r is None and g is None) or torch.equal(r, g) for r, g in zip(ref.tokens[h], got.tokens[h]))
    zero = {"enc_blocks.1.mlp": lambda t, v: t * 0.5}
    ref, got = linear.forward_spliced(a, b, zero), linear.decode(*linear.encode(a, b, edits=zero))
    assert all(torch.equal(r[k], g[k]) for r, g in zip(ref, got) for k in r)
    with pytest.raises(AssertionError, match="decode"):
        linear.encode(a, edits={"dec_blocks.0": lambda t, v: t})
    with pytest.raises(AssertionError, match="encode"):
        linear.decode(ea, eb, hooks=["enc_norm"])


def test_mixed_size_pair_records_both_views(linear):
    (v1, v2), _ = load_case("linear", "portrait_view2")  # view 2 is portrait: the views are encoded one at a time
    full = linear.forward_hooks(v1, v2, ["enc_blocks.0", "enc_norm"])
    called = []
    handle = linear.enc_blocks[1].register_forward_hook(lambda *a: called.append(1))
    try:
        early = linear.forward_hooks(v1, v2, ["enc_blocks.0"])
    finally:
        handle.remove()
    assert called == []  # neither view's encoder went past the point
    assert all(torch.equal(x, y) for x, y in zip(full.tokens["enc_blocks.0"], early.tokens["enc_blocks.0"]))


@pytest.mark.slow
def test_compiles_without_graph_breaks(linear):
    """torch.compile(fullgraph=True) raises at any graph break; the eager backend checks tracing without codegen."""
    (v1, v2), _ = load_case("linear", "landscape_b2")
    compiled = torch.compile(linear, backend="eager", fullgraph=True)
    with torch.no_grad():
        ref, got = linear(v1, v2), compiled(v1, v2)
    assert all(torch.equal(r[k], g[k]) for r, g in zip(ref, got) for k in r)


def test_rope_rotation_is_bitwise_the_official_formula():
    """croco's RoPE2D: per axis half, x * cos + cat(-x2, x1) * sin with cos/sin looked up from a (P, D) table."""
    from models.blocks import RoPE2D
    from models.dust3r import _positions
    B, h, w, Hd, Dh = 2, 3, 5, 4, 16
    pos = _positions(B, h, w, "cpu")
    t = torch.randn(B, h * w, Hd, Dh)
    D = Dh // 2
    inv = 1.0 / (100.0 ** (torch.arange(0, D, 2).float() / D))
    freqs = torch.einsum("i,j->ij", torch.arange(max(h, w)).float(), inv)
    freqs = torch.cat((freqs, freqs), dim=-1)  # (P, D)
    halves = []
    for axis, x in enumerate(t.chunk(2, dim=-1)):
        cos = torch.nn.functional.embedding(pos[:, :, axis], freqs.cos())[:, :, None]  # (B,N,1,D)
        sin = torch.nn.functional.embedding(pos[:, :, axis], freqs.sin())[:, :, None]
        x1, x2 = x[..., :D // 2], x[..., D // 2:]
        halves.append(x * cos + torch.cat((-x2, x1), dim=-1) * sin)
    assert torch.equal(RoPE2D.rotate(t, RoPE2D(100.0).tables(pos, Dh)), torch.cat(halves, dim=-1))
