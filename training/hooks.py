"""Hook points of a frozen DUSt3R: the one parser of hook names, and extracting their tokens.

Hook strings (module paths, the sparsify convention; the same string is in config, log and folder
names): 'enc_blocks.<i>' / 'enc_norm' give both views' tokens; 'dec_blocks.<i>' view 1's (branch 1),
'dec_blocks2.<i>' view 2's (branch 2), and 'dec_blocks*.<i>' both branches into one SAE. Inside a block, a
stage suffix names the residual stream after one of its adds (models/dust3r.py): '.attn' and '.mlp' for
encoder blocks, '.attn', '.cross_attn' and '.mlp' for decoder blocks ('dec_blocks*.5.cross_attn'); '.mlp' is
the block output itself. A pair's
tokens are laid out [view/branch 1 tokens, view/branch 2 tokens] (row-major patch grid each); the
branch of every token is recorded alongside (`branch`, 1 or 2).
"""
import contextlib

import torch

# every hook family in forward order (the layer comparison sorts by it); block i of a family ranks base + i + 1
HOOK_ORDER = {"patch_embed": 0, "enc_blocks": 1, "enc_norm": 1000, "decoder_embed": 1001, "dec_blocks": 1002,
              "dec_blocks2": 1002, "dec_blocks*": 1002, "dec_norm": 2000}
STAGES = {"enc_blocks": ("attn", "mlp"), "dec_blocks": ("attn", "cross_attn", "mlp")}  # sub-block points, forward order
STAGE_RANK = {"attn": -0.75, "cross_attn": -0.5, "mlp": -0.25, "": 0}  # inside block i: between block i-1 and block i


def split_stage(hook):
    """'dec_blocks*.5.cross_attn' -> ('dec_blocks*.5', '.cross_attn'); 'enc_blocks.5' -> ('enc_blocks.5', '')."""
    parts = hook.split(".")
    return (".".join(parts[:2]), "." + parts[2]) if len(parts) == 3 else (hook, "")


def parse_hook(hook):
    """'dec_blocks*.5' -> ('dec_blocks*', 5); 'dec_blocks*.5.cross_attn' too; 'enc_norm' -> ('enc_norm', None)."""
    base, stage = split_stage(hook)
    family, dot, index = base.partition(".")
    if family not in HOOK_ORDER or bool(dot) != family.startswith(("enc_blocks", "dec_blocks")) or (
            dot and not index.isdigit()) or (stage and stage[1:] not in STAGES.get(family.rstrip("2*"), ())):
        raise ValueError(f"hook={hook!r}: expected one of 'enc_blocks.<i>', 'enc_norm', 'decoder_embed', "
                         "'dec_blocks.<i>', 'dec_blocks2.<i>', 'dec_blocks*.<i>', 'dec_norm', 'patch_embed', or inside "
                         "a block 'enc_blocks.<i>.attn|mlp', 'dec_blocks[2|*].<i>.attn|cross_attn|mlp'")
    return family, int(index) if dot else None


def hook_sources(hook, allowed_prefixes):
    """Hook string -> [(model hook point, view)] in the order a pair's tokens are laid out."""
    if not hook.startswith(allowed_prefixes):
        raise ValueError(f"hook={hook!r}: this script takes hook points starting with {allowed_prefixes}")
    family, i = parse_hook(hook)
    if family == "dec_blocks*":
        stage = split_stage(hook)[1]
        return [(f"dec_blocks.{i}{stage}", 1), (f"dec_blocks2.{i}{stage}", 2)]
    if family == "dec_blocks2":
        return [(hook, 2)]
    if family == "dec_blocks":
        return [(hook, 1)]
    return [(hook, 1), (hook, 2)]  # encoder points and decoder_embed / dec_norm carry both views


def view_sources(hook):
    """(hook point of view-1 tokens, hook point of view-2 tokens) for the analysis. A decoder SAE trained on
    one branch is also applied to the same block of the other branch, so that both views can be compared."""
    family, i = parse_hook(hook)
    if family.startswith("dec_blocks"):
        stage = split_stage(hook)[1]
        return f"dec_blocks.{i}{stage}", f"dec_blocks2.{i}{stage}"
    return hook, hook


def hook_rank(hook):
    """Forward order of a hook string, for the layer comparison."""
    family, i = parse_hook(hook)
    return HOOK_ORDER[family] + (i + 1 if i is not None else 0) + STAGE_RANK[split_stage(hook)[1][1:]]


def pooled_branches(sources):
    """[1, 2] when the tokens come from two hook points pooled into one SAE ('dec_blocks*.<i>'), else []."""
    return [v for _, v in sources] if len({name for name, _ in sources}) > 1 else []


def check_hook(model, sources):
    bad = sorted({name for name, _ in sources if name not in model.hook_points})
    if bad:
        blocks = [h for h in model.hook_points if h.count(".") < 2]  # the sub-block points add a suffix to a block
        raise ValueError(f"hook point(s) {bad} not in this model; valid: {blocks}, and inside a block "
                         "'<block>.attn', '<block>.mlp', decoder blocks also '<block>.cross_attn'")


def autocast(device):
    """bf16 autocast for DUSt3R on CUDA (its heads stay fp32 internally); nothing on CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


def views_to(view, device):
    """The fields DUSt3R reads, on `device` (geometry stays on the CPU for the evaluation)."""
    return {k: v.to(device, non_blocking=True) if k in ("img", "true_shape") else v for k, v in view.items()}


@torch.no_grad()
def extract(model, view1, view2, sources, device):
    """-> tokens (B, T, C) float16 in pair layout, branch (T,) uint8. fp16 halves memory and disk and holds
    bf16 outputs exactly; overflow (|x| > 65504) is an error rather than silent infs."""
    view1, view2 = views_to(view1, device), views_to(view2, device)
    with autocast(device):
        out = model.forward_hooks(view1, view2, hooks=sorted({name for name, _ in sources}))
    parts = [out.tokens[name][view - 1] for name, view in sources]  # each (B, N, C)
    x = torch.cat(parts, dim=1).to(torch.float16)  # (B, T, C)
    if not torch.isfinite(x).all():
        raise FloatingPointError(f"activations at {[n for n, _ in sources]} overflow float16 (|x| > 65504)")
    branch = torch.cat([torch.full((p.shape[1],), v, dtype=torch.uint8) for p, (_, v) in zip(parts, sources)])
    return x, branch
