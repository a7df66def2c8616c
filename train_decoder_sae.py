"""Train a sparse autoencoder (SAE) on DUSt3R *decoder* tokens, streamed from a frozen DUSt3R.

    python train_decoder_sae.py                                  # the defaults below (one GPU; CPU works, slowly)
    python train_decoder_sae.py --hook=dec_blocks2.11 --k=64     # any constant below: --key=value
    python train_decoder_sae.py sweep.yaml --seed=1              # flat YAML overrides, then the command line
    python train_decoder_sae.py --checkpoint=/path/to/DUSt3R_ViTLarge_BaseDecoder_224_linear.pth   # offline
    torchrun --nproc_per_node=4 train_decoder_sae.py             # DDP: each rank runs DUSt3R on its share of pairs
    # CPU smoke run, ~10 s: tiny random-weight DUSt3R, a complete run folder
    python train_decoder_sae.py --checkpoint=random-tiny --hook='dec_blocks*.1' --train_tokens=3072 --batch_size=256 \
        --buffer_pairs=4 --dust3r_batch=2 --eval_pairs=2 --eval_every=6 --k=4 --expansion=4 --num_workers=0

DUSt3R's decoder has two branches with separate weights: `dec_blocks` (view 1, predicts its points in
its own frame) and `dec_blocks2` (view 2, predicts its points in view 1's frame). `hook` picks one branch
('dec_blocks.<i>', 'dec_blocks2.<i>') or both into one shared SAE ('dec_blocks*.<i>'), in which case every
token's branch is recorded and FVU / L0 are also reported per branch (a pooled SAE may spend latents on
branch identity alone).
Pairs from `dataset` go through the frozen DUSt3R (no grad; bf16 autocast on CUDA), the tokens at `hook`
are shuffled in a buffer spanning `buffer_pairs` pairs, and the SAE trains on batches of `batch_size`
tokens. Every `eval_every` steps it is evaluated on held-out pairs (training/evaluate.py: FVU and L0,
per branch too when pooled, dead/dense latents, density histogram, and the spliced 3D fidelity, where the
reconstruction replaces the hook's branch tokens). Output: results/<run_name>/ with the files of an
encoder run (config.yaml, log.txt, metrics.jsonl, sae.safetensors + sae_config.json, curves.png and
checkpoint/; rerunning the same command resumes an interrupted run). With --cache=True the branch tokens
are first written once to cache/<hash>/ and training reads them from there. --help lists every constant.
Runtime: as for the encoder script, DUSt3R dominates (~1.5 s per 224 pair on 2 CPU cores,
bench/bench_pipeline.py), so the 100M-token default is a GPU job; GPU throughput is not measured yet.
"""
import os
import sys

import torch

from data import make_dataset
from models.loading import load_dust3r
from models.sae import SAE, SAEConfig
from training.cache import cache_identity
from training.checkpoint import Checkpoints
from training.config import apply_overrides, constants, require, require_positive
from training.curves import plot_curves
from training.ddp import cleanup_ddp
from training.evaluate import EvalSet, evaluate, log_eval
from training.hooks import check_hook, hook_sources, hook_width, pooled_branches
from training.run import GracefulStop, TrainProgress, log_data_summary, seed_everything, start_run
from training.step import lr_at, sae_step
from training.stream import token_stream

# -----------------------------------------------------------------------------------------------------
# model and data (`hook` picks the decoder branch(es))
checkpoint = "naver/DUSt3R_ViTLarge_BaseDecoder_224_linear"  # hub id | local .pth / HF folder | 'random-tiny' (tests)
dataset = "builtin"          # 'builtin' (procedural scenes, no download) | 'blendedmvs' | 'arkitscenes' | ...
data_root = ""               # dataset folder; '' = the dataset's default
resolution = 224             # 224 -> 224x224, the 224_linear checkpoint's training size (14x14 tokens per branch)
hook = "dec_blocks*.5"       # 'dec_blocks.<i>' | 'dec_blocks2.<i>' (0..11) | 'dec_blocks*.<i>' both branches, one SAE;
                             # block 5: the decoder's middle, where cross-attention matches patches (Reloc3r #8);
                             # also 'pixels' / 'patch_embed' (the appearance anchor, same recipe as the decoder SAE)
# SAE (defaults: README "Defaults and why")
sae_kind = "topk"            # 'topk' (+ AuxK) | 'batchtopk' | 'matryoshka' (BatchTopK, nested prefixes) | 'relu' (+ L1)
expansion = 16               # latents = expansion * d (16 x 768 = 12288: saev's 16x; BatchTopK ref 12288 for 768)
k = 32                       # active latents per token (topk, batchtopk): openai, sparsify, saev, BatchTopK
aux_k = 512                  # AuxK: dead latents used to model the residual (Gao et al.)
aux_coeff = 0.03125          # AuxK weight, 1/32 (Gao et al.)
l1_coeff = 5e-3              # relu only: L1 weight (models/sae.py; tune it for the L0 you want)
token_weight = True          # loss weights each token's squared error by d / ||x - b_dec||^2: its relative error (README)
                             # (set False with sae_kind='relu': it slows ReLU+L1's recovery, README)
dead_tokens = 10_000_000     # dead = no firing in this many tokens (openai, sparsify, saev); capped at 5% of the run
init_tokens = 65536          # tokens for the normalisation and geometric-median b_dec (openai: 32768); pooled: both
# optimisation
lr = 2.3e-4                  # Adam; Gao et al.'s 2e-4 * (16384 / latents) ** 0.5 at 12288 latents
warmup_steps = 500           # linear warm-up (saev 500, sparsify 1000); capped at 10% of the run
decay_frac = 0.2             # linear decay to 0 over the last 20% of steps (SAELens docs)
grad_clip = 1.0              # max gradient norm (SAELens, dictionary_learning, saev); 0 = off
sae_bf16 = True              # CUDA only: bf16 autocast for the SAE (weights, Adam stay fp32; sparsify: ~2x faster)
train_tokens = 100_000_000   # patch tokens to train on (saev: 100M; about 255k pairs at 224 with both branches)
batch_size = 16384           # tokens per optimizer step, summed over ranks (saev)
buffer_pairs = 512           # pairs whose tokens are shuffled together (1024 images, 200k tokens, 300 MB fp16)
dust3r_batch = 16            # pairs per DUSt3R forward; must divide buffer_pairs / world size
num_workers = min(4, os.cpu_count() or 1)  # data-loading processes, at most one per CPU (DataLoader warns above)
# evaluation, checkpoints, output
eval_every = 250             # steps between held-out evaluations (4M tokens; saev, SAELens: 1-5M) and one at the end
eval_pairs = 64              # held-out pairs (the dataset's 'val' split); FVU, L0 also per branch when pooled
fidelity = True              # spliced 3D fidelity in every evaluation: the reconstruction replaces the branch tokens
log_every = 50               # steps between training-metric lines in metrics.jsonl
ckpt_every = 500             # steps between resumable checkpoints (also written on Ctrl-C / SIGTERM)
max_steps = 0                # stop after this many steps in this invocation (checkpointed; rerun resumes); 0 = all
cache = False                # True: first write the branch tokens once to cache_dir (resumable), then read them
cache_dir = "cache"          # activation caches: cache_dir/<hash of weights, hook, dataset, resolution>/
out_dir = "results"          # runs go to out_dir/run_name/
run_name = ""                # '' = dec-<hook>-<sae_kind>-k<k>-x<expansion>-<dataset>-s<seed> ('*' -> 'both')
device = "auto"              # 'auto' (cuda if available) | 'cpu' | 'cuda'
seed = 0                     # SAE init and token shuffling (the dataset itself is fixed)
# -----------------------------------------------------------------------------------------------------
config = apply_overrides(constants(globals()), sys.argv[1:], doc=__doc__)
globals().update(config)
# values that cannot work stop here, before any model is loaded or any file is written
require_positive(config, "train_tokens", "batch_size", "expansion", "k", "buffer_pairs", "dust3r_batch", "eval_pairs",
                 "eval_every", "log_every", "ckpt_every", "init_tokens", "lr")
require(train_tokens >= batch_size, "train_tokens", train_tokens, f">= batch_size ({batch_size}), one optimizer step",
        "raise --train_tokens or lower --batch_size")
require(num_workers >= 0 and max_steps >= 0, "num_workers/max_steps", (num_workers, max_steps), "values >= 0")

# derived values: the hook's branch(es), the run name, the schedule
sources = hook_sources(hook, ("pixels", "patch_embed", "dec_blocks.", "dec_blocks2.", "dec_blocks*."))  # [(hook, view)]
branches = pooled_branches(sources)  # [1, 2] for 'dec_blocks*.<i>' (one SAE, both branches), else []
run_name = run_name or f"dec-{hook.replace('*', 'both')}-{sae_kind}-k{k}-x{expansion}-{dataset}-s{seed}"
total_steps = train_tokens // batch_size
warmup = min(warmup_steps, total_steps // 10)  # at most 10% of the run
dead_window = min(dead_tokens, max(batch_size, train_tokens // 20))  # at most 5% of the run
run, rank, world, dev = start_run(os.path.join(out_dir, run_name), config, device, seed, __file__)
require(buffer_pairs % world == 0 and buffer_pairs // world % dust3r_batch == 0, "dust3r_batch", dust3r_batch,
        f"a divisor of buffer_pairs / world size = {buffer_pairs} / {world}", "change --dust3r_batch or --buffer_pairs")

# data: the frozen DUSt3R, held-out pairs, the stream of the branch tokens (from DUSt3R or the cache)
# frozen, the training variant (landscape tensors of portrait views); decoder hooks need its encoder too
model = load_dust3r(checkpoint, dev, landscape_only=True, seed=seed, log=run.log)
check_hook(model, sources)
d_in = hook_width(model, hook)  # decoder width (768 for the ViT-L/Base checkpoint); also 'pixels', 'patch_embed'
# training reads images only (no depth, masks or pointmaps: the SAE needs none; same images, README Data)
train_ds = make_dataset(dataset, root=data_root or None, resolution=resolution, split="train", geometry=False)
val_ds = make_dataset(dataset, root=data_root or None, resolution=resolution, split="val")
run.log(f"data: {len(train_ds)} train pairs, {len(val_ds)} val pairs; hook {hook} ({d_in}-d)")
ev = EvalSet.from_model(model, val_ds, sources=sources, device=dev, n_pairs=eval_pairs,
                        batch_size=dust3r_batch, fidelity=fidelity)
tokens_per_pair = ev.tokens.shape[1]  # one branch, or both branches when pooled (196 each at 224)
identity = cache_identity(model, hook=hook, dataset=dataset, data_root=data_root, resolution=resolution,
                          device=dev) if cache else None  # None: stream live from DUSt3R
stream = token_stream(model, train_ds, sources=sources, device=dev, tokens_per_pair=tokens_per_pair,
                      batch_size=batch_size, buffer_pairs=buffer_pairs, seed=seed, rank=rank, world=world,
                      dust3r_batch=dust3r_batch, num_workers=num_workers, cache_dir=cache_dir, identity=identity,
                      train_tokens=train_tokens, log=run.log)  # pooled: both branches shuffled together

# model: the SAE and its optimizer; resume from checkpoint/ when there is one, else initialise from the first buffer
seed_everything(seed)  # the SAE's init depends on seed alone, not on whether a cache was just written
sae = SAE(SAEConfig(d_in=d_in, n_latents=expansion * d_in, kind=sae_kind, k=k, aux_k=aux_k, aux_coeff=aux_coeff,
                    dead_tokens=dead_window, l1_coeff=l1_coeff, l1_warmup_steps=max(1, total_steps // 20),
                    token_weight=token_weight)).to(dev)
optimizer = torch.optim.Adam(sae.param_groups(), lr=lr)  # pooled: one SAE and optimizer for both branches
ckpt = Checkpoints(run, sae, optimizer=optimizer, config=config, batch_size=batch_size,
                   tokens_per_pair=tokens_per_pair)
step = ckpt.resume_or_init(dev, init_sample=lambda: stream.init_sample(init_tokens))  # pooled: mixes both branches
run.begin(step)  # the run is valid: only now config.yaml, log.txt and metrics.jsonl are written (rank 0)
run.log(f"SAE {sae_kind} {d_in} -> {sae.cfg.n_latents} (k={k}); {total_steps} steps of {batch_size} tokens; "
        f"{tokens_per_pair} tokens per pair; world size {world}")

# loop: one SAE step per batch; train records, held-out evals (rank 0) and checkpoints every so many steps
stop = total_steps if max_steps <= 0 else min(total_steps, step + max_steps)
graceful = GracefulStop()  # Ctrl-C / SIGTERM: finish the step, checkpoint, exit 130; a second one aborts at once
progress = TrainProgress(run, step, total_steps=total_steps, batch_size=batch_size,
                         branches=branches)  # pooled: L0 per branch too
batches = stream.batches(step)
while step < stop and not graceful.requested(world, dev):
    x, branch = next(batches)  # branch: 1 or 2 per token, the decoder branch it came from
    lr_now = lr_at(step, total_steps, lr=lr, warmup_steps=warmup, decay_frac=decay_frac)
    # one call, not written out here: its order-sensitive constraint steps must match in both scripts (training/step.py)
    out = sae_step(sae, optimizer, x=x, lr=lr_now, grad_clip=grad_clip, world_size=world,
                   bf16=sae_bf16 and dev.type == "cuda")
    step += 1
    progress.update(step, out, optimizer, branch, record=step % log_every == 0 or step == stop)
    if run.active and (step % eval_every == 0 or step == total_steps):
        log_eval(run, step, step * batch_size, evaluate(sae, ev))  # pooled: FVU per branch too
    if step % ckpt_every == 0 or step == stop:
        ckpt.save(step)
progress.close()
log_data_summary(run, step, world, dev, train=train_ds, val=val_ds)  # unreadable pairs (none read from a cache)
if step < stop:  # a signal on some rank
    graceful.checkpoint_and_exit(run, ckpt, step)

# save
if run.active and step == total_steps:
    sae.save(run.dir)  # sae.safetensors + sae_config.json (normalisation folded in); pooled: one SAE, both branches
    plot_curves(run.dir, title=f"{run_name}: SAE on DUSt3R {hook}")
    run.log(f"done: {step} steps, {step * batch_size} tokens in {progress.seconds():.0f} s -> {run.dir}")
elif run.active:
    run.log(f"stopped at step {step} of {total_steps} (max_steps={max_steps}); rerun to continue")
cleanup_ddp()
