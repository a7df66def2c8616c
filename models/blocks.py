"""The ViT building blocks of DUSt3R (croco/models/blocks.py, croco/models/pos_embed.py): 2-D RoPE, self- and
cross-attention, MLP, the encoder block and the decoder block. Parameter names are the official state-dict keys
(`attn.qkv`, `cross_attn.projq`, `norm_y`, ...), so models/dust3r.py, which assembles them, loads strict=True.

Blocks take a `tap(stage, x)` callback at their residual adds: the sub-block hook points of models/dust3r.py.

Shape legend: B batch, N tokens (h*w patch grid), C channels, Hd heads, Dh head dim.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange


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


def no_tap(stage, x):
    return x


class Block(nn.Module):
    """Encoder block. `tap(stage, x)` sees (and may replace) the residual stream after the attention add ('attn') and
    after the MLP add ('mlp'); the model passes a real one only when a sub-block point of this block is requested."""

    def __init__(self, dim, num_heads, mlp_ratio=4.0):
        super().__init__()
        self.norm1, self.attn = LayerNorm(dim), Attention(dim, num_heads)
        self.norm2, self.mlp = LayerNorm(dim), Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x, rope, tap=no_tap):
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

    def forward(self, x, y, rope_x, rope_y, tap=no_tap):
        x = tap("attn", x + self.attn(self.norm1(x), rope_x))
        y_ = self.norm_y(y)  # the other view's tokens, used as both keys and values
        x = tap("cross_attn", x + self.cross_attn(self.norm2(x), y_, rope_x, rope_y))
        return tap("mlp", x + self.mlp(self.norm3(x)))
