"""DUSt3R (naver, CVPR 2024) in plain PyTorch, with named hook points for interpretability.

Re-implemented from a written spec of the official code (naver/dust3r @4c24a6e,
naver/croco @d7de070). Module and parameter names are the official state-dict keys, so the released
checkpoints load with strict=True (see models/loading.py). What the official code lacks and we add:
  * hook points named by module path ('enc_blocks.23', 'dec_blocks2.11', and inside blocks 'dec_blocks.5.cross_attn'):
    `forward_hooks` returns their tokens and computes nothing after the last one it needs;
  * `forward_spliced` runs the full model with a replacement function at any hook points;
  * `encode` / `decode`: the encoder once per image, reused by any pairing of the views;
  * the heads are real submodules (official: closures, which break deepcopy);
  * attention through F.scaled_dot_product_attention on token-major tensors, RoPE tables once per forward, no host
    sync: torch.compile traces the inference variant as one graph.

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
# one view after the encoder: tokens (B,N,Ce) after enc_norm, pos (B,N,2), true_shape and grid (B,2), hw = tensor (H, W)
Encoded = namedtuple("Encoded", ["tokens", "pos", "true_shape", "grid", "hw"])


# ----------------------------------------------------------------------------------------------------
# RoPE100: 2-D rotary embedding (croco/models/pos_embed.py, RoPE2D). The first half of each head vector rotates with the
# row (y), the second half with the column (x); rotate-half convention, inv_freq = base^(-2k/D), q and k only.

class RoPE2D(nn.Module):
    def __init__(self, freq: float = 100.0, F0: float = 1.0):
        super().__init__()
        self.base, self.F0 = freq, F0

    def tables(self, pos: torch.Tensor, head_dim: int) -> "RopeTables":
        """Rotation tables for positions pos (B,N,2), built once per forward and shared by every block."""
        return RopeTables(pos, head_dim, self.base)

    @staticmethod
    def rotate(t: torch.Tensor, tables: "RopeTables") -> torch.Tensor:
        """t (..., B,N,Hd,Dh) -> t * cos + rotate_half(t) * sin, per axis half, with the official arithmetic.
        In quarters [a_y, b_y, a_x, b_x] the official code computes, per axis, [a, b] * cos + [-b, a] * sin; the minus
        sign lives in the sin table ((-b) * s == b * (-s) exactly) and each quarter adds its partner's product in place:
        bitwise the same result as the official cat/chunk version, at half the memory traffic of a swapped copy."""
        cos, sin = tables.get(t.dtype)  # (B,N,1,Dh) each
        out = t * cos
        q = t.shape[-1] // 4
        for dst, src in ((0, 1), (1, 0), (2, 3), (3, 2)):
            out[..., dst * q:(dst + 1) * q].add_(t[..., src * q:(src + 1) * q] * sin[..., dst * q:(dst + 1) * q])
        return out


class RopeTables:
    """cos and signed sin per token, (B,N,1,Dh) covering both axes, cached per dtype: the official code casts the fp32
    angles to the token dtype (bf16 under autocast) before cos/sin, and so do we. Angles are computed per token
    (pos * inv_freq, the same single fp32 product as the official table lookup) so that no table size has to be
    read back from the device: no host sync, nothing that breaks a torch.compile graph."""

    def __init__(self, pos, head_dim, base):
        D = head_dim // 2  # channels per axis
        inv_freq = 1.0 / (base ** (torch.arange(0, D, 2, device=pos.device).float() / D))  # (D/2,)
        self.angles = pos.float()[..., None] * inv_freq  # (B,N,2,D/2) fp32, axis 0 = y, 1 = x
        self.cache = {}

    def get(self, dtype):
        if dtype not in self.cache:
            a = self.angles.to(dtype)
            cos, sin = a.cos(), a.sin()
            cos = rearrange(torch.stack((cos, cos), dim=-2), "b n ax half f -> b n 1 (ax half f)")
            sin = rearrange(torch.stack((-sin, sin), dim=-2), "b n ax half f -> b n 1 (ax half f)")
            self.cache[dtype] = cos, sin  # (B,N,1,Dh): [y, y, x, x] quarters; sin signed [-, +, -, +]
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
        qkv = rearrange(self.qkv(x), "b n (three hd dh) -> three b n hd dh", three=3, hd=self.num_heads)  # a view
        q, k = RoPE2D.rotate(qkv[:2], rope)  # q and k in one pass, (B,N,Hd,Dh) each
        return self.proj(_attend(q, k, qkv[2]))


def _attend(q, k, v):
    """(B,N,Hd,Dh) token-major q, k, v -> (B,N,C). SDPA (scale Dh^-0.5, as official) takes (B,Hd,N,Dh) views
    and writes its output in the query's memory order: token-major in, token-major out, so merging the heads is a
    view, not a copy (head-major q would cost a full copy of the tokens per attention on CPU)."""
    x = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return rearrange(x, "b hd n dh -> b n (hd dh)")


class CrossAttention(nn.Module):
    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.projq, self.projk, self.projv = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, y, rope_x, rope_y):
        split = lambda t: rearrange(t, "b n (hd dh) -> b n hd dh", hd=self.num_heads)  # noqa: E731  (a view)
        q = RoPE2D.rotate(split(self.projq(x)), rope_x)  # queries rotate with their own view's positions
        k = RoPE2D.rotate(split(self.projk(y)), rope_y)  # keys with the other view's
        return self.proj(_attend(q, k, split(self.projv(y))))


def _no_tap(stage, x):
    return x


class Block(nn.Module):
    """Encoder block. `tap(stage, x)` sees (and may replace) the residual stream after the attention add ('attn') and
    after the MLP add ('mlp'); the model passes a real one only when a sub-block point of this block is requested."""

    def __init__(self, dim, num_heads, mlp_ratio=4.0):
        super().__init__()
        self.norm1, self.attn = LayerNorm(dim), Attention(dim, num_heads)
        self.norm2, self.mlp = LayerNorm(dim), Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x, rope, tap=_no_tap):
        x = tap("attn", x + self.attn(self.norm1(x), rope))
        return tap("mlp", x + self.mlp(self.norm2(x)))


class DecoderBlock(nn.Module):
    """Decoder block of one branch: x reads the other view's tokens y. `tap` as in Block: attn, cross_attn, mlp."""

    def __init__(self, dim, num_heads, mlp_ratio=4.0, norm_mem=True):
        super().__init__()
        self.norm1, self.attn = LayerNorm(dim), Attention(dim, num_heads)
        self.cross_attn = CrossAttention(dim, num_heads)
        self.norm2, self.norm3 = LayerNorm(dim), LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.norm_y = LayerNorm(dim) if norm_mem else nn.Identity()

    def forward(self, x, y, rope_x, rope_y, tap=_no_tap):
        x = tap("attn", x + self.attn(self.norm1(x), rope_x))
        y_ = self.norm_y(y)  # the other view's tokens, used as both keys and values
        x = tap("cross_attn", x + self.cross_attn(self.norm2(x), y_, rope_x, rope_y))
        return tap("mlp", x + self.mlp(self.norm3(x)))


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
        xyz = (xyz / d.clip(min=1e-8)).mul_(d.square() if mode == "square" else torch.expm1(d))  # into the quotient
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
        enc = [f"enc_blocks.{i}{s}" for i in range(enc_depth) for s in (".attn", ".mlp", "")]
        dec = [f"dec_blocks{b}.{i}{s}" for i in range(dec_depth) for b in ("", "2")
               for s in (".attn", ".cross_attn", ".mlp", "")]
        self.hook_points = ["patch_embed"] + enc + ["enc_norm", "decoder_embed"] + dec + ["dec_norm"]  # forward order
        self._order = {name: i for i, name in enumerate(self.hook_points)}

    # ---------------------------------------------------------------- public API
    def forward(self, view1: dict, view2: dict):
        """Official call: (res1, res2) with res1 pts3d/conf and res2 conf/pts3d_in_other_view."""
        return self._run(view1, view2, _Taps())

    def forward_hooks(self, view1: dict, view2: dict, hooks) -> HookOutput:
        """Tokens (B,N,C) at the named hook points for both views; stops after the last one needed.
        tokens[name] = (view-1 tokens or None, view-2 tokens or None): 'dec_blocks.i*' exist only for view 1,
        'dec_blocks2.i*' only for view 2. grid1/grid2 (B,2) give each item's (h, w) in its real orientation."""
        hooks = [hooks] if isinstance(hooks, str) else list(hooks)
        self._check(hooks)
        return self._run(view1, view2, _Taps(record=hooks, order=self._order))

    def forward_spliced(self, view1: dict, view2: dict, edits: dict):
        """Full forward with edits[name](tokens, view) replacing the tokens at hook point `name` (both views
        where both pass through it). Gradients flow if the caller enables them."""
        self._check(edits)
        return self._run(view1, view2, _Taps(edits=edits))

    def encode(self, *views: dict, edits: dict | None = None) -> list:
        """Encoder output of each view (an `Encoded`), for reuse by several `decode` pairings: (A, B), (B, A) and
        (A, A) need the encoder once per image. Views of one size go through as one batch, as in `forward`, so
        decode(*encode(v1, v2)) is forward(v1, v2) exactly. `edits` may name encoder hook points (up to enc_norm);
        edit functions get the view's position in this call (1, 2, ...)."""
        edits = dict(edits or {})
        self._check(edits)
        late = [n for n in edits if self._order[n] > self._order["enc_norm"]]
        assert not late, f"encode() runs the encoder only; edits at {late} belong in decode()"
        return self._encode_views(views, _Taps(edits=edits))

    def encode_from(self, name: str, tokens: list, encoded: list) -> list:
        """encode(*views, edits={name: ...}), bit for bit, without recomputing the encoder before `name` (patch_embed,
        enc_blocks.<i> or enc_norm): `tokens` are the views' (edited) tokens there, `encoded` their encode()."""
        depth = len(self.enc_blocks)
        first = dict(patch_embed=0, enc_norm=depth, **{f"enc_blocks.{i}": i + 1 for i in range(depth)})  # next block
        assert name in first and all(e.hw == encoded[0].hw for e in encoded), f"{name}: block output, one image size"
        x, views = torch.cat(tokens), tuple(range(1, len(tokens) + 1))  # (V*B,N,Ce): as encode() batched the views
        if name != "enc_norm":
            x = self._encode_blocks(x, torch.cat([e.pos for e in encoded]), views, _Taps(), first[name])
        return [e._replace(tokens=t) for e, t in zip(encoded, x.chunk(len(tokens)))]

    def decode(self, enc1: "Encoded", enc2: "Encoded", *, hooks=None, edits: dict | None = None):
        """Decoders and heads on encoded views: (res1, res2) as `forward`, or with `hooks` (decoder_embed onwards) a
        HookOutput as `forward_hooks`, stopping after the last point needed. `edits` as in `forward_spliced`."""
        names = [hooks] if isinstance(hooks, str) else list(hooks or [])
        edits = dict(edits or {})
        self._check(names + list(edits))
        early = [n for n in names + list(edits) if self._order[n] < self._order["decoder_embed"]]
        assert not early, f"decode() starts at decoder_embed; {early} belong in encode() / forward_hooks()"
        taps = _Taps(edits=edits, record=names, order=self._order)
        return taps.run(lambda: self._decode(enc1, enc2, taps, heads=not names), lambda: (enc1.grid, enc2.grid))

    # ---------------------------------------------------------------- internals
    def _check(self, names):
        bad = [n for n in names if n not in self._order]
        if bad:
            raise KeyError(f"unknown hook point(s) {bad}; valid: patch_embed, enc_blocks.0..{len(self.enc_blocks) - 1}, "
                           f"enc_norm, decoder_embed, dec_blocks.i, dec_blocks2.i (0..{len(self.dec_blocks) - 1}), "
                           "dec_norm; in blocks: enc_blocks.i.attn|mlp, dec_blocks[2].i.attn|cross_attn|mlp")

    def _run(self, view1, view2, taps):
        return taps.run(lambda: self._decode(*self._encode_views((view1, view2), taps), taps, heads=not taps.record),
                        lambda: [self.patch_embed.grid(v["img"], _true_shape(v, v["img"])) for v in (view1, view2)])

    def _encode_views(self, views, taps):
        """Encoded per view; same-size views go through as one batch, as official (it changes CPU numerics by ~1e-5)."""
        imgs = [v["img"] for v in views]
        shapes = [_true_shape(v, img) for v, img in zip(views, imgs)]
        nums = tuple(range(1, len(views) + 1))
        if all(img.shape[-2:] == imgs[0].shape[-2:] for img in imgs):
            feat, pos = self._encode(torch.cat(imgs), torch.cat(shapes), nums, taps)
            parts = zip(feat.chunk(len(views)), pos.chunk(len(views)))
        else:
            parts = []
            for img, ts, n in zip(imgs, shapes, nums):
                taps.solo = True  # recording: stop this view's encoder at the last point, go on with the next view
                try:
                    parts.append(self._encode(img, ts, (n,), taps))
                except _Done:
                    if taps.complete():
                        raise
                    parts.append((None, None))
                finally:
                    taps.solo = False
        return [Encoded(f, p, ts, self.patch_embed.grid(img, ts), tuple(img.shape[-2:]))
                for (f, p), ts, img in zip(parts, shapes, imgs)]

    def _encode(self, img, true_shape, views, taps):
        x, pos = self.patch_embed(img, true_shape)  # (B,N,Ce), (B,N,2)
        return self._encode_blocks(taps("patch_embed", x, views), pos, views, taps, 0), pos

    def _encode_blocks(self, x, pos, views, taps, first):  # encoder blocks first, first + 1, ..., then enc_norm
        rope = self.rope.tables(pos, self.enc_embed_dim // self.enc_blocks[0].attn.num_heads)
        for i in range(first, len(self.enc_blocks)):
            x = taps(f"enc_blocks.{i}", self.enc_blocks[i](x, rope, taps.inside(f"enc_blocks.{i}", views)), views)
        return taps("enc_norm", self.enc_norm(x), views)

    def _decode(self, enc1, enc2, taps, heads):
        # decoders: synchronous exchange, each view reads the other's previous layer (dust3r/model.py, _decoder)
        head_dim = self.dec_embed_dim // self.dec_blocks[0].attn.num_heads if len(self.dec_blocks) else 2
        rope1, rope2 = self.rope.tables(enc1.pos, head_dim), self.rope.tables(enc2.pos, head_dim)
        dec1, dec2 = [enc1.tokens], [enc2.tokens]  # the heads' lists start with the encoder output, not decoder_embed's
        f1 = taps("decoder_embed", self.decoder_embed(enc1.tokens), (1,))
        f2 = taps("decoder_embed", self.decoder_embed(enc2.tokens), (2,))
        for i, (blk1, blk2) in enumerate(zip(self.dec_blocks, self.dec_blocks2)):
            n1, n2 = f"dec_blocks.{i}", f"dec_blocks2.{i}"
            new1 = taps(n1, blk1(f1, f2, rope1, rope2, taps.inside(n1, (1,))), (1,))
            f2 = taps(n2, blk2(f2, f1, rope2, rope1, taps.inside(n2, (2,))), (2,))
            f1 = new1
            dec1.append(f1)
            dec2.append(f2)
        dec1[-1] = taps("dec_norm", self.dec_norm(f1), (1,))
        dec2[-1] = taps("dec_norm", self.dec_norm(f2), (2,))
        if not heads:
            return None
        # heads always in fp32, autocast off (official forward does the same)
        with torch.autocast(device_type=enc1.tokens.device.type, enabled=False):
            res1 = self._head(self.downstream_head1, [t.float() for t in dec1], enc1)
            res2 = self._head(self.downstream_head2, [t.float() for t in dec2], enc2)
        res2["pts3d_in_other_view"] = res2.pop("pts3d")
        return res1, res2

    def _head(self, head, dec, enc):
        """dust3r/utils/misc.py transpose_to_landscape: inference variant runs at the batch's one true_shape; training
        variant runs portrait items at their real shape and transposes their outputs back to landscape."""
        run = lambda d, hw: postprocess(head(d, hw), self.depth_mode, self.conf_mode)  # noqa: E731
        true_shape = enc.true_shape
        if not self.landscape_only:
            if not self.patch_embed.many_ar:  # the tensor is upright: its size is the true shape (no host read-back)
                if not torch.compiler.is_compiling():
                    assert (true_shape == torch.tensor(enc.hw)).all(), \
                        f"true_shape {true_shape.tolist()} differs from the image size {enc.hw}"
                return run(dec, enc.hw)
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


class _Done(Exception):
    """Raised by _Taps after the last hook point it records: nothing after it is computed."""


class _Taps:
    """The edits and recordings of one forward. Called at every hook point; a no-op set lookup when nothing is asked."""

    def __init__(self, edits=None, record=(), order=None):
        self.edits, self.record = dict(edits or {}), set(record)
        self.active = set(self.edits) | self.record
        self.blocks = {n.rsplit(".", 1)[0] for n in self.active if n.count(".") == 2}  # blocks with sub-block points
        self.last = max(self.record, key=order.get) if self.record else None
        self.tokens = {name: [None, None] for name in record}
        self.solo = False  # True while one view of a mixed-size pair goes through the encoder alone

    def __call__(self, name, x, views):
        """Apply the edit at `name`, record its tokens. x holds the given views' tokens, concatenated."""
        if name not in self.active:
            return x
        parts = list(x.chunk(len(views))) if len(views) > 1 else [x]
        if name in self.edits:
            parts = [self.edits[name](t, v) for t, v in zip(parts, views)]
            x = torch.cat(parts) if len(parts) > 1 else parts[0]
        if name in self.record:
            for t, v in zip(parts, views):
                self.tokens[name][v - 1] = t
            if name == self.last and (self.solo or self.complete()):
                raise _Done
        return x

    def complete(self):
        """Every view the last point carries is recorded (decoder branch 1 carries view 1 only, branch 2 view 2)."""
        branch = self.last.split(".")[0]
        carried = {"dec_blocks": (1,), "dec_blocks2": (2,)}.get(branch, (1, 2))
        return all(self.tokens[self.last][v - 1] is not None for v in carried)

    def inside(self, block, views):
        """The tap a block calls at its sub-block points; the identity when none of them is asked for."""
        return (lambda stage, x: self(f"{block}.{stage}", x, views)) if block in self.blocks else _no_tap

    def run(self, forward, grids):
        """forward()'s outputs; when recording, a HookOutput (forward stops by _Done after the last point needed)."""
        if not self.record:
            return forward()
        try:
            forward()
        except _Done:
            pass
        return HookOutput({k: tuple(v) for k, v in self.tokens.items()}, *grids())


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
