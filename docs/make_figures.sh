#!/usr/bin/env bash
# Rebuilds docs/figures/ (the README's pictures) from scratch on CPU, with no download: a tiny random-weight
# DUSt3R ('random-tiny'), SAEs on five hook points, their analyses and the layer comparison. ~10 min on 2 cores.
# The pictures show what the scripts produce, not findings about DUSt3R (the weights are random).
#     bash docs/make_figures.sh
set -euo pipefail
cd "$(dirname "$0")/.."
tiny="--checkpoint=random-tiny --train_tokens=40000 --batch_size=1024 --buffer_pairs=16 --dust3r_batch=4 --eval_pairs=8 --eval_every=10 --k=4 --lr=1e-3"
python train_encoder_sae.py $tiny --hook=enc_blocks.1 --run_name=demo-enc
python train_encoder_sae.py $tiny --hook=enc_blocks.0 --run_name=demo-enc0
python train_encoder_sae.py $tiny --hook=enc_norm --run_name=demo-encnorm
python train_decoder_sae.py $tiny --hook='dec_blocks*.0' --run_name=demo-dec0
python train_decoder_sae.py $tiny --hook='dec_blocks*.1' --run_name=demo-dec1
python analyze_results.py results/demo-enc0 results/demo-enc results/demo-encnorm results/demo-dec0 results/demo-dec1 \
    --n_pairs=32 --min_support=10 --compare_dir=results/demo-layers
k=$(basename "$(dirname "$(ls results/demo-enc/latents/*/pointcloud.png | head -1)")")   # a pictured latent with a point cloud
for f in heatmap examples pointcloud; do cp "results/demo-enc/latents/$k/$f.png" "docs/figures/latent_$f.png"; done
cp results/demo-enc/figures/histograms.png results/demo-enc/figures/consistency_gt.png docs/figures/
cp results/demo-enc/curves.png docs/figures/training_curves.png
cp results/demo-layers/layers.png docs/figures/layers.png
# the browser as a reader sees it: the top of results/demo-enc/index.html in headless Chromium (Debian: chromium)
chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1100,1500 \
    --screenshot="$PWD/docs/figures/browser.png" "file://$PWD/results/demo-enc/index.html"
echo "docs/figures/ rebuilt from latent $k of results/demo-enc"
