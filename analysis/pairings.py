"""DUSt3R tokens of a batch of pairs as (A, B) and as the controls (B, A) and (A, A), with the encoder run once
per image.

DUSt3R's encoder sees each image alone (the two views first meet in the decoders' cross-attention), so A's and
B's encoder outputs are the same in all three pairings: `model.encode` runs the encoder once for both images
and `model.decode` runs the decoders of each pairing on those tokens (the official code's symmetrized-batch
shortcut saves the same work for (a, b), (b, a) batches). An encoder hook point needs no decoder run for the
controls at all: their tokens are A's and B's own. The outputs equal three separate forwards' (tests/test_pairings.py).
`reuse=False` is that reference: three passes through the whole network, for the tests and for timing the
difference (analyze_results.py --reuse_encoder=False).
"""
import torch

from training.hooks import autocast, views_to

PAIRINGS = {"ab": (0, 1), "ba": (1, 0), "aa": (0, 0)}  # pairing -> (image in slot 1, image in slot 2); 0 = A, 1 = B


@torch.no_grad()
def pairing_tokens(model, view1, view2, hooks, *, controls, device, reuse=True):
    """hooks: (hook point of slot-1 tokens, hook point of slot-2 tokens), e.g. ('dec_blocks.5', 'dec_blocks2.5').
    -> ({pairing: (slot-1 tokens (B,N1,C), slot-2 tokens (B,N2,C), slot-1 grid (B,2), slot-2 grid (B,2))} for 'ab'
    and, with controls, 'ba' and 'aa'; DUSt3R's outputs (res1, res2) of (A, B)). Tokens stay on the device."""
    v = [views_to(view1, device), views_to(view2, device)]  # A, B
    names = sorted(set(hooks))
    rec = {}

    def keep(name):  # identity edit that records the tokens on the way
        def edit(t, slot):
            rec[(name, slot)] = t
            return t
        return edit

    pairings = list(PAIRINGS) if controls else ["ab"]
    out = {}
    with autocast(device):
        if not reuse:  # reference: every pairing through the whole network
            res = model.forward_spliced(v[0], v[1], {h: keep(h) for h in names})
            out["ab"] = (rec[(hooks[0], 1)], rec[(hooks[1], 2)])
            for p in pairings[1:]:
                i, j = PAIRINGS[p]
                o = model.forward_hooks(v[i], v[j], names)
                out[p] = (o.tokens[hooks[0]][0], o.tokens[hooks[1]][1])
            grids = [model.patch_embed.grid(x["img"], torch.as_tensor(x["true_shape"]).reshape(-1, 2)) for x in v]
            return {p: out[p] + (grids[PAIRINGS[p][0]], grids[PAIRINGS[p][1]]) for p in pairings}, res
        last_enc = model.hook_points.index("enc_norm")
        if all(model.hook_points.index(h) <= last_enc for h in hooks):  # encoder hook: slot = image
            enc = model.encode(v[0], v[1], edits={h: keep(h) for h in names})
            res = model.decode(*enc)
            out = {p: (rec[(hooks[0], i + 1)], rec[(hooks[1], j + 1)]) for p, (i, j) in PAIRINGS.items()}
        else:  # decoder hook: one decoder run per pairing on the shared encoder outputs
            enc = model.encode(v[0], v[1])
            res = model.decode(*enc, edits={h: keep(h) for h in names})
            out["ab"] = (rec[(hooks[0], 1)], rec[(hooks[1], 2)])
            for p in pairings[1:]:
                i, j = PAIRINGS[p]
                o = model.decode(enc[i], enc[j], hooks=names)
                out[p] = (o.tokens[hooks[0]][0], o.tokens[hooks[1]][1])
    return {p: out[p] + (enc[PAIRINGS[p][0]].grid, enc[PAIRINGS[p][1]].grid) for p in pairings}, res
