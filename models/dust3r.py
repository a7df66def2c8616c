"""DUSt3R (naver, CVPR 2024) in plain PyTorch, with named hook points for interpretability.

Re-implemented from a written spec of the official code (naver/dust3r @4c24a6e,
naver/croco @d7de070). Module and parameter names are the official state-dict keys, so the released
checkpoints load with strict=True (see models/loading.py). What the official code lacks and we add:
  * hook points named by module path ('enc_blocks.23', 'dec_blocks2.11', ...): `forward_hooks` returns
    their tokens and computes nothing after the last one it needs;
  * `forward_spliced` runs the full model with a replacement function at any hook points;
  * the heads are real submodules (official: closures, which break deepcopy);
  * attention through F.scaled_dot_product_attention, RoPE tables computed once per forward.

Shape legend: B batch, N tokens (h*w patch grid), C channels, Hd heads, Dh head dim, H x W pixels.
"""
from __future__ import annotations

import copy
from collections import namedtuple
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from models.dpt import DPTHead

Edit = Callable[[torch.Tensor, int], torch.Tensor]  # (tokens (B,N,C), view 1|2) -> tokens (B,N,C)
HookOutput = namedtuple("HookOutput", ["tokens", "grid1", "grid2"])


# ----------------------------------------------------------------------------------------------------
# RoPE100: 2-D rotary embedding (croco/models/pos_embed.py, RoPE2D). The first half of each head vector rotates with the row (y),
# the second half with the column (x); rotate-half convention, inv_freq = base^(-2k/D), q and k only.

class RoPE2D(nn.Module):
    def __init__(self, freq: float = 100.0, F0: float = 1.0):
        super().__init__()
        self.base, self.F0 = freq, F0

    def tables(self, pos: torch.Tensor, head_dim: int) -> "RopeTables":
        """Rotation tables for positions pos (B,N,2), built once per forward and shared by every block."""
        return RopeTables(pos, head_dim, self.base)

    @staticmethod
    def rotate(t: torch.Tensor, tables: "RopeTables") -> torch.Tensor:
        """t (B,Hd,N,Dh) rotated in place of the official pure-torch RoPE, with the same arithmetic."""
        halves = t.chunk(2, dim=-1)  # y channels, x channels
        out = []
        for h, (cos, sin) in zip(halves, tables.get(t.dtype)):
            a, b = h.chunk(2, dim=-1)
            out.append(h * cos + torch.cat((-b, a), dim=-1) * sin)
        return torch.cat(out, dim=-1)


class RopeTables:
    """cos/sin per token, (B,1,N,Dh/2) for y and for x, cached per dtype: the official code casts the fp32
    angles to the token dtype (bf16 under autocast) before cos/sin, and so do we."""

    def __init__(self, pos, head_dim, base):
        D = head_dim // 2  # channels per axis
        inv_freq = 1.0 / (base ** (torch.arange(0, D, 2, device=pos.device).float() / D))
        t = torch.arange(int(pos.max()) + 1, device=pos.device, dtype=inv_freq.dtype)
        self.angles = torch.einsum("i,j->ij", t, inv_freq)  # (P, D/2), fp32
        self.pos, self.cache = pos, {}

    def get(self, dtype):
        if dtype not in self.cache:
            freqs = self.angles.to(dtype)
            freqs = torch.cat((freqs, freqs), dim=-1)  # (P, D)
            cos, sin = freqs.cos(), freqs.sin()
            self.cache[dtype] = [(F.embedding(self.pos[:, :, a], cos)[:, None], F.embedding(self.pos[:, :, a], sin)[:, None])
                                 for a in (0, 1)]  # y, then x: each (B,1,N,D)
        return self.cache[dtype]


# ----------------------------------------------------------------------------------------------------
# transformer blocks (croco/models/blocks.py): pre-norm, LayerNorm eps 1e-6, exact GELU, biases everywhere

def LayerNorm(dim):
    return nn.LayerNorm(dim, eps=1e-6)


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.qkv, self.proj = nn.Linear(dim, dim * 3), nn.Linear(dim, dim)

    def forward(self, x, rope):
        qkv = rearrange(self.qkv(x), "b n (three hd dh) -> three b hd n dh", three=3, hd=self.num_heads)
        q, k, v = RoPE2D.rotate(qkv[0], rope), RoPE2D.rotate(qkv[1], rope), qkv[2]  # (B,Hd,N,Dh)
        x = F.scaled_dot_product_attention(q, k, v)  # scale Dh^-0.5 as official (q@k^T)*scale
        return self.proj(rearrange(x, "b hd n dh -> b n (hd dh)"))


class CrossAttention(nn.Module):
    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.projq, self.projk, self.projv = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, y, rope_x, rope_y):
        split = lambda t: rearrange(t, "b n (hd dh) -> b hd n dh", hd=self.num_heads)  # noqa: E731
        q = RoPE2D.rotate(split(self.projq(x)), rope_x)  # queries rotate with their own view's positions
        k = RoPE2D.rotate(split(self.projk(y)), rope_y)  # keys with the other view's
        x = F.scaled_dot_product_attention(q, k, split(self.projv(y)))
        return self.proj(rearrange(x, "b hd n dh -> b n (hd dh)"))


class Block(nn.Module):
    def __init__(self, dim, num_heads, mlp_ratio=4.0):
        super().__init__()
        self.norm1, self.attn = LayerNorm(dim), Attention(dim, num_heads)
        self.norm2, self.mlp = LayerNorm(dim), Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x, rope):
        x = x + self.attn(self.norm1(x), rope)
        return x + self.mlp(self.norm2(x))


class DecoderBlock(nn.Module):
    def __init__(self, dim, num_heads, mlp_ratio=4.0, norm_mem=True):
        super().__init__()
        self.norm1, self.attn = LayerNorm(dim), Attention(dim, num_heads)
        self.cross_attn = CrossAttention(dim, num_heads)
        self.norm2, self.norm3 = LayerNorm(dim), LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.norm_y = LayerNorm(dim) if norm_mem else nn.Identity()

    def forward(self, x, y, rope_x, rope_y):
        x = x + self.attn(self.norm1(x), rope_x)
        y_ = self.norm_y(y)  # the other view's tokens, used as both keys and values
        x = x + self.cross_attn(self.norm2(x), y_, rope_x, rope_y)
        return x + self.mlp(self.norm3(x))


# ----------------------------------------------------------------------------------------------------
# patch embedding (dust3r/patch_embed.py). One module for both official classes: they share the keys patch_embed.proj.*

class PatchEmbed(nn.Module):
    """16x16 conv. many_ar=False is PatchEmbedDust3R (inference: take the tensor as it is); many_ar=True is
    ManyAR_PatchEmbed (training): tensors are landscape, and items whose true_shape is portrait are
    transposed back before the conv, so tokens and positions are those of the upright image."""

    def __init__(self, embed_dim, patch_size=16, many_ar=False):
        super().__init__()
        self.patch_size, self.many_ar = patch_size, many_ar
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)

    def grid(self, img: torch.Tensor, true_shape: torch.Tensor) -> torch.Tensor:
        """(B,2) patch grid (h, w) of each item, in its real orientation."""
        B, _, H, W = img.shape
        if not self.many_ar:
            return torch.tensor([[H // self.patch_size, W // self.patch_size]]).repeat(B, 1)
        return true_shape.cpu().long() // self.patch_size

    def forward(self, img, true_shape):
        B, _, H, W = img.shape
        p = self.patch_size
        assert H % p == 0 and W % p == 0, f"image size {H}x{W} is not a multiple of the patch size {p}"
        if not self.many_ar:
            return rearrange(self.proj(img), "b c h w -> b (h w) c"), _positions(B, H // p, W // p, img.device)
        assert W >= H, "ManyAR patch embedding takes landscape tensors (portrait items are transposed)"
        portrait = (true_shape[:, 0] > true_shape[:, 1]).to(img.device)  # official: landscape iff w >= h
        x = img.new_zeros((B, (H // p) * (W // p), self.proj.out_channels))
        pos = torch.zeros((B, x.shape[1], 2), dtype=torch.long, device=img.device)
        for sel, im, (h, w) in ((~portrait, img, (H // p, W // p)), (portrait, img.transpose(-1, -2), (W // p, H // p))):
            if sel.any():
                x[sel] = rearrange(self.proj(im[sel]), "b c h w -> b (h w) c").to(x.dtype)
                pos[sel] = _positions(1, h, w, img.device)
        return x, pos


def _positions(B, h, w, device):
    """(B, h*w, 2) integer (y, x) coordinates, row-major."""
    return torch.cartesian_prod(torch.arange(h, device=device), torch.arange(w, device=device))[None].repeat(B, 1, 1)


# ----------------------------------------------------------------------------------------------------
# heads and postprocess (dust3r/heads/linear_head.py, dust3r/heads/postprocess.py)

def postprocess(out: torch.Tensor, depth_mode, conf_mode) -> dict:
    """out (B,4,H,W) raw head output -> pts3d (B,H,W,3) and conf (B,H,W)."""
    fmap = out.permute(0, 2, 3, 1)  # (B,H,W,4)
    mode, vmin, vmax = depth_mode
    assert vmin == -float("inf") and vmax == float("inf"), "only unbounded depth modes exist in DUSt3R"
    xyz = fmap[..., 0:3]
    if mode != "linear":
        d = xyz.norm(dim=-1, keepdim=True)
        xyz = xyz / d.clip(min=1e-8)
        xyz = xyz * (d.square() if mode == "square" else torch.expm1(d))
    res = {"pts3d": xyz}
    if conf_mode is not None:
        mode, vmin, vmax = conf_mode
        c = fmap[..., 3]
        res["conf"] = vmin + c.exp().clip(max=vmax - vmin) if mode == "exp" else (vmax - vmin) * torch.sigmoid(c) + vmin
    return res


class LinearPts3d(nn.Module):
    """Linear head: one Linear per token to a 16x16 patch of (x, y, z, conf), then pixel_shuffle."""

    def __init__(self, dec_embed_dim, patch_size=16, has_conf=True):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Linear(dec_embed_dim, (3 + has_conf) * patch_size ** 2)

    def forward(self, dec: list, hw) -> torch.Tensor:
        h, w = hw[0] // self.patch_size, hw[1] // self.patch_size
        feat = rearrange(self.proj(dec[-1]), "b (h w) c -> b c h w", h=h, w=w)  # channel c*256 + dy*16 + dx
        return F.pixel_shuffle(feat, self.patch_size)  # (B,4,H,W)


# ----------------------------------------------------------------------------------------------------

class AsymmetricCroCo3DStereo(nn.Module):
    """DUSt3R. Constructor arguments are the official ones (the keyword names of the args.model string and of
    the Hugging Face config.json); models/loading.py validates them before they get here."""

    def __init__(self, output_mode="pts3d", head_type="linear", depth_mode=("exp", -float("inf"), float("inf")),
                 conf_mode=("exp", 1, float("inf")), freeze="none", landscape_only=True,
                 patch_embed_cls="PatchEmbedDust3R", img_size=224, patch_size=16, mask_ratio=0.9,
                 enc_embed_dim=768, enc_depth=12, enc_num_heads=12, dec_embed_dim=512, dec_depth=8,
                 dec_num_heads=16, mlp_ratio=4, norm_im2_in_dec=True, pos_embed="cosine"):
        super().__init__()
        # mask_ratio / freeze / img_size only matter for official training (mask generator, requires_grad,
        # mask-generator grid): accepted so that every official config builds; the model is frozen anyway
        assert output_mode == "pts3d", f"output_mode={output_mode!r}: only 'pts3d' is a DUSt3R output"
        assert pos_embed.startswith("RoPE"), f"pos_embed={pos_embed!r}: DUSt3R checkpoints use 'RoPE100'"
        assert patch_embed_cls in ("PatchEmbedDust3R", "ManyAR_PatchEmbed"), patch_embed_cls
        self.patch_size, self.enc_embed_dim, self.dec_embed_dim = patch_size, enc_embed_dim, dec_embed_dim
        self.depth_mode, self.conf_mode, self.landscape_only = tuple(depth_mode), tuple(conf_mode), landscape_only
        self.patch_embed = PatchEmbed(enc_embed_dim, patch_size, many_ar=patch_embed_cls == "ManyAR_PatchEmbed")
        self.rope = RoPE2D(freq=float(pos_embed[len("RoPE"):]))
        self.enc_blocks = nn.ModuleList([Block(enc_embed_dim, enc_num_heads, mlp_ratio) for _ in range(enc_depth)])
        self.enc_norm = LayerNorm(enc_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dec_embed_dim))  # CroCo's; never read by DUSt3R (kept for strict loading)
        self.decoder_embed = nn.Linear(enc_embed_dim, dec_embed_dim)
        self.dec_blocks = nn.ModuleList(
            [DecoderBlock(dec_embed_dim, dec_num_heads, mlp_ratio, norm_im2_in_dec) for _ in range(dec_depth)])
        self.dec_norm = LayerNorm(dec_embed_dim)
        self.apply(_init_weights)  # official random init (CroCoNet.initialize_weights), then the copy below
        nn.init.xavier_uniform_(self.patch_embed.proj.weight.view(enc_embed_dim, -1))
        nn.init.normal_(self.mask_token, std=0.02)
        self.dec_blocks2 = copy.deepcopy(self.dec_blocks)  # official: view 2's decoder starts as a copy
        if head_type == "linear":
            self.downstream_head1 = LinearPts3d(dec_embed_dim, patch_size)
            self.downstream_head2 = LinearPts3d(dec_embed_dim, patch_size)
        elif head_type == "dpt":
            assert dec_depth > 9, "the DPT head reads decoder layers [0, L/2, 3L/4, L] and needs dec_depth > 9"
            hooks = [0, dec_depth * 2 // 4, dec_depth * 3 // 4, dec_depth]
            dims = [enc_embed_dim, dec_embed_dim, dec_embed_dim, dec_embed_dim]
            self.downstream_head1 = DPTHead(hooks, dims, patch_size)
            self.downstream_head2 = DPTHead(hooks, dims, patch_size)
        else:
            raise ValueError(f"head_type={head_type!r}: expected 'linear' or 'dpt'")
        self.hook_points = (["patch_embed"] + [f"enc_blocks.{i}" for i in range(enc_depth)]
                            + ["enc_norm", "decoder_embed"]
                            + [f"dec_blocks{s}.{i}" for i in range(dec_depth) for s in ("", "2")] + ["dec_norm"])
        self._order = {name: i for i, name in enumerate(self.hook_points)}

    # ---------------------------------------------------------------- public API
    def forward(self, view1: dict, view2: dict):
        """Official call: (res1, res2) with res1 pts3d/conf and res2 conf/pts3d_in_other_view."""
        return self._run(view1, view2, {}, set(), heads=True)

    def forward_hooks(self, view1: dict, view2: dict, hooks) -> HookOutput:
        """Tokens (B,N,C) at the named hook points for both views; stops after the last one needed.
        tokens[name] = (view-1 tokens or None, view-2 tokens or None): 'dec_blocks.i' exists only for view 1,
        'dec_blocks2.i' only for view 2. grid1/grid2 (B,2) give each item's (h, w) in its real orientation."""
        hooks = [hooks] if isinstance(hooks, str) else list(hooks)
        self._check(hooks)
        return self._run(view1, view2, {}, set(hooks), heads=False)

    def forward_spliced(self, view1: dict, view2: dict, edits: dict):
        """Full forward with edits[name](tokens, view) replacing the tokens at hook point `name` (both views
        where both pass through it). Gradients flow if the caller enables them."""
        self._check(edits)
        return self._run(view1, view2, dict(edits), set(), heads=True)

    # ---------------------------------------------------------------- internals
    def _check(self, names):
        bad = [n for n in names if n not in self._order]
        if bad:
            raise KeyError(f"unknown hook point(s) {bad}; valid: patch_embed, enc_blocks.0..{len(self.enc_blocks) - 1}, "
                           f"enc_norm, decoder_embed, dec_blocks.i, dec_blocks2.i (0..{len(self.dec_blocks) - 1}), dec_norm")

    def _run(self, view1, view2, edits, record, heads):
        img1, img2 = view1["img"], view2["img"]
        shape1 = _true_shape(view1, img1)
        shape2 = _true_shape(view2, img2)
        last = len(self.hook_points) if heads else max(self._order[n] for n in record)
        upto = lambda name: self._order[name] <= last  # noqa: E731  (is this point needed at all?)
        tokens = {name: [None, None] for name in record}

        def tap(name, x, views):
            """Apply the edit at `name`, record its tokens. x holds the given views' tokens, concatenated."""
            if name not in edits and name not in record:
                return x
            parts = list(x.chunk(len(views))) if len(views) > 1 else [x]
            if name in edits:
                parts = [edits[name](t, v) for t, v in zip(parts, views)]
                x = torch.cat(parts) if len(parts) > 1 else parts[0]
            for t, v in zip(parts, views):
                if name in record:
                    tokens[name][v - 1] = t
            return x

        # encoder: same-size views go through as one batch, as official (it changes CPU numerics by ~1e-5)
        if img1.shape[-2:] == img2.shape[-2:]:
            feat, pos = self._encode(torch.cat((img1, img2)), torch.cat((shape1, shape2)), (1, 2), tap, upto)
            (feat1, feat2), (pos1, pos2) = feat.chunk(2), pos.chunk(2)
        else:
            feat1, pos1 = self._encode(img1, shape1, (1,), tap, upto)
            feat2, pos2 = self._encode(img2, shape2, (2,), tap, upto)
        grids = (self.patch_embed.grid(img1, shape1), self.patch_embed.grid(img2, shape2))
        if not upto("decoder_embed"):
            return HookOutput({k: tuple(v) for k, v in tokens.items()}, *grids)

        # decoders: synchronous exchange, each view reads the other's previous layer (dust3r/model.py, _decoder)
        rope1, rope2 = self.rope.tables(pos1, self._dec_head_dim), self.rope.tables(pos2, self._dec_head_dim)
        dec1, dec2 = [feat1], [feat2]  # the heads' lists start with the encoder output, not decoder_embed's
        f1 = tap("decoder_embed", self.decoder_embed(feat1), (1,))
        f2 = tap("decoder_embed", self.decoder_embed(feat2), (2,))
        for i, (blk1, blk2) in enumerate(zip(self.dec_blocks, self.dec_blocks2)):
            n1, n2 = f"dec_blocks.{i}", f"dec_blocks2.{i}"
            new1 = tap(n1, blk1(f1, f2, rope1, rope2), (1,)) if upto(n1) else None
            new2 = tap(n2, blk2(f2, f1, rope2, rope1), (2,)) if upto(n2) else None
            if new2 is None:  # the last needed point was dec_blocks.i
                return HookOutput({k: tuple(v) for k, v in tokens.items()}, *grids)
            f1, f2 = new1, new2
            dec1.append(f1)
            dec2.append(f2)
        if not upto("dec_norm"):
            return HookOutput({k: tuple(v) for k, v in tokens.items()}, *grids)
        dec1[-1] = tap("dec_norm", self.dec_norm(f1), (1,))
        dec2[-1] = tap("dec_norm", self.dec_norm(f2), (2,))
        if not heads:
            return HookOutput({k: tuple(v) for k, v in tokens.items()}, *grids)

        # heads always in fp32, autocast off (official forward does the same)
        with torch.autocast(device_type=img1.device.type, enabled=False):
            res1 = self._head(self.downstream_head1, [t.float() for t in dec1], shape1)
            res2 = self._head(self.downstream_head2, [t.float() for t in dec2], shape2)
        res2["pts3d_in_other_view"] = res2.pop("pts3d")
        return res1, res2

    @property
    def _dec_head_dim(self):
        return self.dec_embed_dim // self.dec_blocks[0].attn.num_heads if len(self.dec_blocks) else 2

    def _encode(self, img, true_shape, views, tap, upto):
        x, pos = self.patch_embed(img, true_shape)  # (B,N,Ce), (B,N,2)
        x = tap("patch_embed", x, views)
        if not upto("enc_blocks.0") and not upto("enc_norm"):
            return x, pos
        rope = self.rope.tables(pos, self.enc_embed_dim // self.enc_blocks[0].attn.num_heads)
        for i, blk in enumerate(self.enc_blocks):
            if not upto(f"enc_blocks.{i}"):
                return x, pos
            x = tap(f"enc_blocks.{i}", blk(x, rope), views)
        if upto("enc_norm"):
            x = tap("enc_norm", self.enc_norm(x), views)
        return x, pos

    def _head(self, head, dec, true_shape):
        """dust3r/utils/misc.py transpose_to_landscape: inference variant runs at the batch's one true_shape; training
        variant runs portrait items at their real shape and transposes their outputs back to landscape."""
        run = lambda d, hw: postprocess(head(d, hw), self.depth_mode, self.conf_mode)  # noqa: E731
        if not self.landscape_only:
            assert (true_shape == true_shape[0:1]).all(), "true_shape must be identical across the batch"
            return run(dec, tuple(int(v) for v in true_shape[0]))
        H, W = int(true_shape.min()), int(true_shape.max())
        portrait = true_shape[:, 0] > true_shape[:, 1]
        if not portrait.any():
            return run(dec, (H, W))
        if portrait.all():
            return {k: v.swapaxes(1, 2) for k, v in run(dec, (W, H)).items()}
        land = run([d[~portrait.to(d.device)] for d in dec], (H, W))
        port = run([d[portrait.to(d.device)] for d in dec], (W, H))
        out = {}
        for k in land:
            out[k] = land[k].new_empty((len(true_shape),) + land[k].shape[1:])
            out[k][~portrait.to(out[k].device)] = land[k]
            out[k][portrait.to(out[k].device)] = port[k].swapaxes(1, 2)
        return out


def _init_weights(m):
    """CroCo's init for random-weight models: xavier-uniform Linear, zero bias, LayerNorm (1, 0)."""
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def _true_shape(view: dict, img: torch.Tensor) -> torch.Tensor:
    """(B,2) (H, W) of each image in its real orientation; defaults to the tensor's own shape."""
    ts = view.get("true_shape")
    if ts is None:
        return torch.tensor(img.shape[-2:])[None].repeat(img.shape[0], 1)
    return torch.as_tensor(ts).reshape(-1, 2).long()
