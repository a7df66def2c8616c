#!/usr/bin/env bash
# The README's consistency table (section "Consistency: what the instrument measures"), from scratch on CPU with
# no download: a tiny random-weight DUSt3R ('random-tiny'), SAEs with one recipe (TopK k=32, 40k tokens) on raw
# pixels (the appearance anchor) and four hook points, then one analysis of all of them on the same 32 held-out
# built-in pairs at 224 px, with the control codes. Writes results/instrument-*/ and results/instrument-layers/.
#     bash docs/instrument_table.sh
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python}
tiny="--checkpoint=random-tiny --train_tokens=40000 --batch_size=1024 --buffer_pairs=16 --dust3r_batch=4 --eval_pairs=8 --eval_every=10 --k=32 --lr=1e-3"
$py train_encoder_sae.py $tiny --hook=pixels --expansion=1 --run_name=instrument-pixels   # 768 latents (16 x 32 = 512 for the others)
$py train_encoder_sae.py $tiny --hook=patch_embed --run_name=instrument-patch_embed
$py train_encoder_sae.py $tiny --hook=enc_blocks.1 --run_name=instrument-enc1
$py train_encoder_sae.py $tiny --hook=enc_norm --run_name=instrument-encnorm
$py train_decoder_sae.py $tiny --hook='dec_blocks*.1' --run_name=instrument-dec1
$py analyze_results.py results/instrument-pixels results/instrument-patch_embed results/instrument-enc1 \
    results/instrument-encnorm results/instrument-dec1 --n_pairs=32 --min_support=10 --n_cards=8 --n_ply=1 \
    --compare_dir=results/instrument-layers
