#!/usr/bin/env bash
# Rebuilds the README's figures of the section "Where 3D emerges: a layer sweep" on CPU, with no download: the
# tiny random-weight DUSt3R ('random-tiny'). The pictures show what the scripts produce; what a random model can and
# cannot show is said in the README. A few minutes on 2 cores.
#     bash docs/make_probe_figures.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# 1. layer probes: every hook point of random-tiny, 48 train pairs for the probes, 24 val pairs scored
time python analyze_results.py --mode=probe --checkpoint=random-tiny --probe_train_pairs=48 --n_pairs=24 \
    --probe_dir=results/probe-random-tiny
cp results/probe-random-tiny/probes.png docs/figures/probes.png
# 2. per-latent 3D attributes and causal effects: the quick start's SAE (trained here if it is not there yet)
[ -f results/demo-enc/sae.safetensors ] || python train_encoder_sae.py --checkpoint=random-tiny --hook=enc_blocks.1 \
    --train_tokens=40000 --batch_size=1024 --buffer_pairs=16 --dust3r_batch=4 --eval_pairs=8 --eval_every=10 --k=4 \
    --lr=1e-3 --run_name=demo-enc
time python analyze_results.py results/demo-enc --n_pairs=32 --min_support=10
cp results/demo-enc/figures/attributes.png docs/figures/attributes.png
k=$(basename "$(dirname "$(ls results/demo-enc/latents/*/causal.png | head -1)")")   # the first pictured latent
cp "results/demo-enc/latents/$k/causal.png" docs/figures/latent_causal.png
echo "docs/figures/probes.png, attributes.png, latent_causal.png rebuilt (causal: latent $k of results/demo-enc)"
