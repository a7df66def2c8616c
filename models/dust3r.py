"""DUSt3R (naver, CVPR 2024) in plain PyTorch, with named hook points for interpretability.

Re-implemented from a written spec of the official code (naver/dust3r @4c24a6e,
naver/croco @d7de070). Module and parameter names are the official state-dict keys, so the released
checkpoints load with strict=True (see models/loading.py). What the official code lacks and we add:
  * hook points named by module path ('enc_blocks.23', 'dec_blocks2.11', and inside blocks 'dec_blocks.5.cross_attn'),
    plus 'pixels' (each 16x16x3 input patch as DUSt3R normalises images, the appearance anchor of issue 8):
    `forward_hooks` returns their tokens and computes nothing after the last one it needs;
  * `forward_spliced` runs the full model with a replacement function at any hook points;
  * `encode` / `decode`: the encoder once per image, reused by any pairing of the views;
  * the heads are real submodules (official: closures, which break deepcopy);
  * attention through F.scaled_dot_product_attention on token-major tensors, RoPE tables once per forward, no host
    sync: torch.compile traces the inference variant as one graph.
The transformer blocks, attention and RoPE are in models/blocks.py; this file assembles them with the patch
embedding and the heads, and holds the hook-point machinery.

Shape legend: B batch, V views, N tokens (h*w patch grid), C channels (Ce encoder width), H x W pixels.
"""
from __future__ import annotations

import copy
from collections import namedtuple
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from models.blocks import Block, DecoderBlock, LayerNorm, RoPE2D, no_tap
from models.dpt import DPTHead

Edit = Callable[[torch.Tensor, int], torch.Tensor]  # (tokens (B,N,C), view 1|2) -> tokens (B,N,C)
HookOutput = namedtuple("HookOutput", ["tokens", "grid1", "grid2"])
# one view after the encoder: tokens (B,N,Ce) after enc_norm, pos (B,N,2), true_shape and grid (B,2), hw = tensor (H, W)
Encoded = namedtuple("Encoded", ["tokens", "pos", "true_shape", "grid", "hw"])


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

    def patchify(self, img: torch.Tensor, true_shape: torch.Tensor) -> torch.Tensor:
        """(B,N,3*p*p) raw pixel tokens in the token order of forward(), channel-major per patch (c, dy, dx),
        the flattening of proj.weight: forward's tokens = patchify @ proj.weight.reshape(C, -1).T + proj.bias."""
        p = self.patch_size
        flat = lambda im: rearrange(im, "b c (h p) (w q) -> b (h w) (c p q)", p=p, q=p)  # noqa: E731
        if not self.many_ar:
            return flat(img)
        portrait = (true_shape[:, 0] > true_shape[:, 1]).to(img.device)
        out = img.new_zeros((img.shape[0], (img.shape[2] // p) * (img.shape[3] // p), 3 * p * p))
        for sel, im in ((~portrait, img), (portrait, img.transpose(-1, -2))):
            if sel.any():
                out[sel] = flat(im[sel])
        return out

    def forward(self, img, true_shape, pixel_tap=None):
        """-> tokens (B,N,C), positions (B,N,2). pixel_tap(pixels (B,N,3*p*p)) -> pixels: the `pixels` hook
        point; when it returns new pixels the conv runs as the linear map it is, on them."""
        B, _, H, W = img.shape
        p = self.patch_size
        assert H % p == 0 and W % p == 0, f"image size {H}x{W} is not a multiple of the patch size {p}"
        if pixel_tap is not None:
            pix = self.patchify(img, true_shape)
            new = pixel_tap(pix)
            if new is not pix:  # edited: the same affine map as the conv (float sums in another order)
                x = new.to(img.dtype) @ self.proj.weight.reshape(self.proj.out_channels, -1).T + self.proj.bias
                return x, self._pos(img, true_shape)
        if not self.many_ar:
            return rearrange(self.proj(img), "b c h w -> b (h w) c"), _positions(B, H // p, W // p, img.device)
        assert W >= H, "ManyAR patch embedding takes landscape tensors (portrait items are transposed)"
        portrait = (true_shape[:, 0] > true_shape[:, 1]).to(img.device)  # official: landscape iff w >= h
        x = img.new_zeros((B, (H // p) * (W // p), self.proj.out_channels))
        for sel, im in ((~portrait, img), (portrait, img.transpose(-1, -2))):
            if sel.any():
                x[sel] = rearrange(self.proj(im[sel]), "b c h w -> b (h w) c").to(x.dtype)
        return x, self._pos(img, true_shape)

    def _pos(self, img, true_shape):
        B, _, H, W = img.shape
        p = self.patch_size
        if not self.many_ar:
            return _positions(B, H // p, W // p, img.device)
        portrait = (true_shape[:, 0] > true_shape[:, 1]).to(img.device)
        pos = torch.zeros((B, (H // p) * (W // p), 2), dtype=torch.long, device=img.device)
        for sel, (h, w) in ((~portrait, (H // p, W // p)), (portrait, (W // p, H // p))):
            if sel.any():
                pos[sel] = _positions(1, h, w, img.device)
        return pos


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
        self.hook_points = ["pixels", "patch_embed"] + enc + ["enc_norm", "decoder_embed"] + dec + ["dec_norm"]
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
            raise KeyError(f"unknown hook point(s) {bad}; valid: pixels, patch_embed, "
                           f"enc_blocks.0..{len(self.enc_blocks) - 1}, "
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
        tap_pixels = (lambda t: taps("pixels", t, views)) if "pixels" in taps.active else None  # (B,N,3*p*p)
        x, pos = self.patch_embed(img, true_shape, tap_pixels)  # (B,N,Ce), (B,N,2)
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
        return (lambda stage, x: self(f"{block}.{stage}", x, views)) if block in self.blocks else no_tap

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
