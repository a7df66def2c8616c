"""DPT head of DUSt3R_ViTLarge_BaseDecoder_512_dpt (official: dust3r/heads/dpt_head.py on top of
croco/models/dpt_block.py). Keys match the official state dict: `dpt.act_postprocess.*`, `dpt.scratch.*`,
`dpt.head.*`. `scratch.layer_rn.{i}` is the same module as `scratch.layer{i+1}_rn`, registered twice exactly
as officially, so both key spellings exist; the Hugging Face files keep only `layer{i+1}_rn` (loading.py).

Shape legend: B batch, N = h*w tokens, C channels, H x W pixels.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange


def _upsample2(x):
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


class ResidualConvUnit(nn.Module):
    """relu -> conv3x3 -> relu -> conv3x3, plus the input. The first ReLU allocates (x is reused by the skip); the
    second and the skip add write into the convolutions' fresh outputs."""

    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return self.conv2(F.relu(self.conv1(F.relu(x)), inplace=True)).add_(x)


class FusionBlock(nn.Module):
    """refinenet: (x0 [+ RCU1(x1)]) -> RCU2 -> bilinear x2 (align_corners=True) -> 1x1 out_conv."""

    def __init__(self, c):
        super().__init__()
        self.out_conv = nn.Conv2d(c, c, 1)
        self.resConfUnit1 = ResidualConvUnit(c)  # never used by refinenet4, which gets one input (dead weights)
        self.resConfUnit2 = ResidualConvUnit(c)

    def forward(self, x0, x1=None):
        out = x0 if x1 is None else self.resConfUnit1(x1).add_(x0)  # = x0 + RCU1(x1), into RCU1's fresh output
        return self.out_conv(_upsample2(self.resConfUnit2(out)))


class _DPT(nn.Module):
    def __init__(self, hooks, dim_tokens, patch_size, layer_dims=(96, 192, 384, 768), feature_dim=256,
                 last_dim=128, num_channels=4):
        super().__init__()
        self.hooks, self.patch_size = list(hooks), patch_size
        d = layer_dims
        self.act_postprocess = nn.ModuleList([
            nn.Sequential(nn.Conv2d(dim_tokens[0], d[0], 1), nn.ConvTranspose2d(d[0], d[0], 4, stride=4)),  # 4h x 4w
            nn.Sequential(nn.Conv2d(dim_tokens[1], d[1], 1), nn.ConvTranspose2d(d[1], d[1], 2, stride=2)),  # 2h x 2w
            nn.Sequential(nn.Conv2d(dim_tokens[2], d[2], 1)),  # h x w
            nn.Sequential(nn.Conv2d(dim_tokens[3], d[3], 1), nn.Conv2d(d[3], d[3], 3, stride=2, padding=1)),  # h/2
        ])
        self.scratch = nn.Module()
        for i, c in enumerate(d):
            setattr(self.scratch, f"layer{i + 1}_rn", nn.Conv2d(c, feature_dim, 3, padding=1, bias=False))
        self.scratch.layer_rn = nn.ModuleList([getattr(self.scratch, f"layer{i + 1}_rn") for i in range(4)])
        for i in range(1, 5):
            setattr(self.scratch, f"refinenet{i}", FusionBlock(feature_dim))
        self.head = nn.Sequential(
            nn.Conv2d(feature_dim, feature_dim // 2, 3, padding=1),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
            nn.Conv2d(feature_dim // 2, last_dim, 3, padding=1),
            nn.ReLU(inplace=True),  # on the conv's fresh output, (B,128,H,W): 100 MB per 512x384 pair not allocated
            nn.Conv2d(last_dim, num_channels, 1),
        )

    def forward(self, dec: list, hw) -> torch.Tensor:
        h, w = hw[0] // self.patch_size, hw[1] // self.patch_size
        layers = [rearrange(dec[i], "b (h w) c -> b c h w", h=h, w=w) for i in self.hooks]
        layers = [self.scratch.layer_rn[i](post(x)) for i, (post, x) in enumerate(zip(self.act_postprocess, layers))]
        s = self.scratch
        # the 1/32 branch has ceil(h/2) rows: refinenet4 doubles that, so crop back to the 1/16 grid (odd h or w)
        path = s.refinenet4(layers[3])[:, :, :layers[2].shape[2], :layers[2].shape[3]]
        path = s.refinenet3(path, layers[2])
        path = s.refinenet2(path, layers[1])
        path = s.refinenet1(path, layers[0])
        return self.head(path)  # (B,4,H,W)


class DPTHead(nn.Module):
    """PixelwiseTaskWithDPT: holds the adapter under `.dpt` so the keys read downstream_headK.dpt.*."""

    def __init__(self, hooks, dim_tokens, patch_size=16):
        super().__init__()
        self.dpt = _DPT(hooks, dim_tokens, patch_size)

    def forward(self, dec: list, hw) -> torch.Tensor:
        return self.dpt(dec, hw)
