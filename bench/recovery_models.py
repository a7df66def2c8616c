"""The SAEs bench/bench_recovery.py trains side by side: ours through the scripts' step (`Ours`, with the diagnosis's
single-factor tweaks), EleutherAI sparsify's TopK SparseCoder stepped as its Trainer does (`Sparsify`), and
dictionary_learning's BatchTopK, Matryoshka BatchTopK and April-update ReLU+L1 trainers (`DictionaryLearning`).
Each has step(x, lr) and evaluate(x) -> (reconstruction, fired mask, decoder rows); `make_model` builds one from a
--kinds entry."""
import sys

import torch

from models.sae import SAE, SAEConfig, _rank_scale
from training.step import sae_step

GRAD_CLIP = 1.0   # what train_encoder_sae.py / train_decoder_sae.py use
THRESHOLD_WINDOW = 0.05   # BatchTopK's inference-threshold EMA spans ~5 % of the steps: the scripts' rate 0.01 spans
                          # 100 of their ~24k steps, but in a 200-step benchmark it would lag the drifting scores
                          # (toy, lr 3e-3: inference L0 5.9 instead of 8, FVU 0.214 vs 0.192 at this window)


class Ours:
    """Our SAE trained by the scripts' sae_step (same init path as the scripts: init_from_sample).

    spec = kind[:tweak...], the tweaks being the diagnosis's single-factor changes to our recipe:
    enc=<c> encoder columns of norm c at init (the recipe: models.sae.ENC_INIT_NORM), clip=<v> grad clip, aux=<a>
    AuxK weight (the recipe: 1/32), auxk=<n> AuxK's k (the recipe: 512), rank=raw|norm BatchTopK's ranking,
    thr=<r> its threshold's EMA rate, inf=topk evaluate it with per-token top-k instead of its threshold,
    inf=cal with the threshold that gives mean L0 = k on the evaluation set itself (an oracle calibration),
    inf=batch with batch top-k over evaluation batches of the training batch size (its training rule),
    tw per-token relative-error loss (SAEConfig.token_weight),
    l1=<c> the ReLU kind's L1 weight (to match another kind's L0), unit its decoder rows held at norm 1 (the recipe
    before RELU_DEC_INIT_NORM), dec=<c> its rows' initial norm,
    nonorm no input normalisation (mu = 0, s = 1), scale=<c> inputs scaled to E||x - mu|| = c sqrt(D),
    bmean b_dec at the sample mean instead of the median, b0 at the raw origin (x = 0, dl-relu's zero b_dec),
    benc=<c> encoder biases uniform in (-c, c) instead of 0 (dl-relu's, torch nn.Linear's default: c = 1/sqrt(D)),
    benclr=<m> relu's encoder biases step m x the lr (the recipe: models.sae.RELU_BENC_LR_SCALE; 1 = before it)."""

    def __init__(self, spec, c, total_steps, init_x):
        kind, *tweaks = spec.split(":")
        self.name, self.clip, self.inference, self.batch = spec, GRAD_CLIP, None, c["batch"]
        self.sae = SAE(SAEConfig(d_in=c["d"], n_latents=c["width"], kind=kind, k=c["k"],
                                 dead_tokens=min(10_000_000, max(c["batch"], c["tokens"] // 20)),
                                 l1_warmup_steps=max(1, total_steps // 20),
                                 threshold_lr=max(0.01, 1 / (THRESHOLD_WINDOW * total_steps))))
        self.sae.init_from_sample(init_x)
        with torch.no_grad():
            for t in tweaks:
                if t.startswith("enc="):
                    self.sae.W_enc.copy_(self.sae.W_dec.t() * float(t[4:]))
                elif t.startswith("clip="):
                    self.clip = float(t[5:])
                elif t.startswith("l1="):
                    self.sae.cfg.l1_coeff = float(t[3:])
                elif t == "tw":
                    self.sae.cfg.token_weight = True
                elif t == "unit":   # relu as before the April-update recipe: unit rows held at norm 1
                    self.sae.free_decoder = False
                    self.sae.normalize_decoder()
                    self.sae.W_enc.copy_(self.sae._tied_encoder())
                elif t.startswith("dec="):   # relu: decoder rows start at this norm, the encoder tied to them
                    self.sae.W_dec.mul_(float(t[4:]) / self.sae.W_dec.norm(dim=1, keepdim=True))
                    self.sae.W_enc.copy_(self.sae._tied_encoder())
                elif t in ("inf=topk", "inf=cal", "inf=batch"):
                    self.inference = t[4:]
                elif t.startswith("thr="):
                    self.sae.cfg.threshold_lr = float(t[4:])
                elif t.startswith("rank="):
                    self.sae.cfg.batch_rank = t[5:]
                elif t.startswith("auxk="):
                    self.sae.cfg.aux_k = int(t[5:])
                elif t.startswith("aux="):
                    self.sae.cfg.aux_coeff = float(t[4:])
                elif t == "nonorm":
                    self.sae.norm_mean.zero_()
                    self.sae.norm_scale.fill_(1.0)
                    self.sae.b_dec.copy_(init_x.mean(0))
                elif t.startswith("benc="):   # encoder biases uniform in (-c, c) (torch's nn.Linear init: c = 1/sqrt(D))
                    self.sae.b_enc.uniform_(-float(t[5:]), float(t[5:]))
                elif t.startswith("scale="):   # inputs scaled to E||x - mu|| = c sqrt(D) instead of sqrt(D)
                    self.sae.b_dec.mul_(float(t[6:]))
                    self.sae.norm_scale.mul_(float(t[6:]))
                elif t == "b0":   # b_dec at the raw origin (x_in = s x): dl-relu's zero b_dec, inputs scaled as ours
                    self.sae.b_dec.copy_(-self.sae.norm_mean * self.sae.norm_scale)
                elif t.startswith("benclr=") and kind == "relu":
                    pass   # set on the optimizer below
                elif t == "bmean":
                    self.sae.b_dec.copy_(((init_x - self.sae.norm_mean) * self.sae.norm_scale).mean(0))
                else:
                    raise SystemExit(f"--kinds: unknown tweak {t!r} in {spec!r}; expected enc=, clip=, aux=, auxk=, l1=, unit, dec=, rank=, thr=, inf=topk|cal|batch, tw, nonorm, scale=, b0, bmean, benc=, benclr= (relu)")
        self.opt = torch.optim.Adam(self.sae.param_groups(), lr=1.0)
        for t in tweaks:   # benclr=<m>: relu's encoder biases step m x the lr (the recipe: RELU_BENC_LR_SCALE)
            if t.startswith("benclr="):
                self.opt.param_groups[-1]["lr_scale"] = float(t[7:])

    def step(self, x, lr):
        sae_step(self.sae, self.opt, x=x, lr=lr, grad_clip=self.clip, world_size=1)

    @torch.no_grad()
    def evaluate(self, x):
        self.sae.eval()
        kind = self.sae.cfg.kind
        if self.inference in ("cal", "batch"):
            recon, fired = self._batch_rule(x)
        else:
            if self.inference == "topk":   # a BatchTopK SAE read with each token's own top k instead of the threshold
                self.sae.cfg.kind = "topk"
            out = self.sae(x)
            self.sae.cfg.kind = kind
            recon, fired = out.recon, out.latents != 0
        self.sae.train()
        return recon, fired, self.sae.W_dec

    def _batch_rule(self, x):
        """A BatchTopK SAE's codes kept by score = pre / r (models.sae) against the oracle threshold (inf=cal)
        or by batch top-k over consecutive batches of the training size (inf=batch)."""
        sae, k = self.sae, self.sae.cfg.k
        _, x_in = sae._pre(x)
        pre = torch.addmm(sae.b_enc, x_in, sae.W_enc).relu()                        # (B, S)
        score = pre / _rank_scale(sae, x_in)                                         # (B, S)
        if self.inference == "cal":
            keep = score >= score.flatten().topk(len(x) * k).values.min()
        else:
            keep = torch.cat([s >= s.flatten().topk(len(s) * k).values.min() for s in score.split(self.batch)])
        f = pre * keep
        return (f @ sae.W_dec + sae.b_dec) / sae.norm_scale + sae.norm_mean, f != 0

    def bf16_step(self, x, lr):
        sae_step(self.sae, self.opt, x=x, lr=lr, grad_clip=GRAD_CLIP, world_size=1, bf16=True)


class Sparsify:
    """sparsify's SparseCoder, stepped as its Trainer does (fvu loss, AuxK off by default)."""

    def __init__(self, c, total_steps, init_x):
        from sparsify import SparseCoder, SparseCoderConfig
        self.name = "sparsify-topk"
        self.sae = SparseCoder(c["d"], SparseCoderConfig(num_latents=c["width"], k=c["k"]), device=init_x.device)
        self.opt = torch.optim.Adam(self.sae.param_groups(), lr=1.0)
        for t in tweaks:   # benclr=<m>: relu's encoder biases step m x the lr (the recipe: RELU_BENC_LR_SCALE)
            if t.startswith("benclr="):
                self.opt.param_groups[-1]["lr_scale"] = float(t[7:])
        self.first = True

    def step(self, x, lr):
        if self.first:   # Trainer: b_dec = mean of the first batch
            self.sae.b_dec.data = x.mean(0)
            self.first = False
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.sae.set_decoder_norm_to_unit_norm()
        out = self.sae(x)
        out.fvu.backward()
        self.sae.remove_gradient_parallel_to_decoder_directions()
        self.opt.step()
        self.opt.zero_grad()

    @torch.no_grad()
    def evaluate(self, x):
        self.sae.set_decoder_norm_to_unit_norm()
        out = self.sae(x)
        fired = torch.zeros(x.shape[0], self.sae.num_latents, dtype=torch.bool, device=x.device)
        fired.scatter_(1, out.latent_indices, out.latent_acts > 0)
        return out.sae_out, fired, self.sae.W_dec


def _dictionary_learning_trainers():
    """dictionary_learning's trainer modules need only torch and einops, but its package __init__ imports
    nnsight (an LLM-tracing library, not installed: requirements-bench-nodeps.txt is installed with
    --no-deps). Register the package without running its __init__, then import the trainer modules."""
    import importlib
    import importlib.util
    import types
    if "dictionary_learning" not in sys.modules:
        spec = importlib.util.find_spec("dictionary_learning")
        if spec is None:
            raise SystemExit("dl-* kinds need dictionary_learning: pip install --no-deps -r requirements-bench-nodeps.txt")
        pkg = types.ModuleType("dictionary_learning")
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules["dictionary_learning"] = pkg
    return tuple(importlib.import_module(f"dictionary_learning.trainers.{m}")
                 for m in ("batch_top_k", "matryoshka_batch_top_k", "standard"))


class DictionaryLearning:
    """dictionary_learning's BatchTopK / Matryoshka BatchTopK trainers (the papers' authors' reference code),
    stepped through their own `update` (geometric-median b_dec, summed-MSE loss, AuxK, grad clip 1) with our
    learning-rate schedule, dead window, threshold EMA rate and Matryoshka prefixes (S/16, S/8, .., S); and its
    ReLU+L1 trainer after Anthropic's April-2024 update (`dl-relu[:l1=<weight>]`: decoder norms free, L1 weighted
    by them and warmed up over 5 % of the steps as ours, no input normalisation, rows initialised at norm 0.1).
    Tweak norm=<c> (every dl-* kind) feeds them our input normalisation at scale c."""

    def __init__(self, spec, c, total_steps, init_x):
        batch_top_k, matryoshka, standard = _dictionary_learning_trainers()
        kind, *tweaks = spec.split(":")
        self.name = "dl-" + spec
        common = dict(steps=total_steps, activation_dim=c["d"], dict_size=c["width"], layer=0, lm_name="-",
                      warmup_steps=max(1, total_steps // 10), device=str(init_x.device), lr=1.0)
        topk = dict(k=c["k"], threshold_start_step=0,
                    threshold_beta=1 - max(0.01, 1 / (THRESHOLD_WINDOW * total_steps)))
        if kind == "batchtopk":
            self.trainer = batch_top_k.BatchTopKTrainer(**common, **topk)
        elif kind == "matryoshka":
            self.trainer = matryoshka.MatryoshkaBatchTopKTrainer(group_fractions=[1 / 16, 1 / 16, 1 / 8, 1 / 4, 1 / 2],
                                                                 **common, **topk)
        elif kind == "relu":   # Anthropic's April-2024 recipe, as ours: L1 weighted by decoder norms, warmed up
            l1 = [float(t[3:]) for t in tweaks if t.startswith("l1=")]
            self.trainer = standard.StandardTrainerAprilUpdate(l1_penalty=l1[0] if l1 else 0.1,
                                                               sparsity_warmup_steps=max(1, total_steps // 20), **common)
        else:
            raise SystemExit(f"--kinds: dictionary_learning kinds are dl-batchtopk, dl-matryoshka and dl-relu, not dl-{kind}")
        if any(not t.startswith(("l1=", "norm=")) for t in tweaks) or (kind != "relu" and any(t.startswith("l1=")
                                                                                             for t in tweaks)):
            raise SystemExit(f"--kinds: {spec!r}: dl-* kinds take norm=<c> (dl-relu also l1=<weight> and l0)")
        # norm=<c>: feed it our input normalisation, (x - mu) s c with s = sqrt(D) / E||x - mu|| (models.sae's, whose
        # c is 1), and map its reconstructions back: the same trainer on the inputs ours sees
        self.mu, self.s = torch.zeros(c["d"], device=init_x.device), 1.0
        for t in tweaks:
            if t.startswith("norm="):
                self.mu = init_x.mean(0)
                self.s = float(t[5:]) * c["d"] ** 0.5 / (init_x - self.mu).norm(dim=1).mean().item()
        self.trainer.dead_feature_threshold = min(10_000_000, max(c["batch"], c["tokens"] // 20))
        self.n = 0

    def step(self, x, lr):
        for group in self.trainer.optimizer.param_groups:   # our schedule; update() then steps theirs, overridden next time
            group["lr"] = lr
        self.trainer.update(self.n, (x - self.mu) * self.s)
        self.n += 1

    @torch.no_grad()
    def evaluate(self, x):
        ae = self.trainer.ae
        f = ae.encode((x - self.mu) * self.s)               # their inference (BatchTopK: JumpReLU at the learnt threshold)
        rows = ae.W_dec if hasattr(ae, "W_dec") else ae.decoder.weight.T
        return ae.decode(f) / self.s + self.mu, f != 0, rows


def make_model(kind, c, total, init_x):
    if kind == "sparsify":
        return Sparsify(c, total, init_x)
    if kind.startswith("dl-"):
        return DictionaryLearning(kind[3:], c, total, init_x)
    return Ours(kind, c, total, init_x)
