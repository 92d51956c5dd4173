#!/bin/bash
# The paper's Alg. 2 ablation on the random-weight generator "demo-random" (64x64; DEMO_CONFIG in
# i2spp_jax/generator.py; the table in BUILD_NOTES.md was measured on it), set GEN=demo for the trained one;
# target rendered from a hidden latent and hidden noise (truth_seed 123), paper losses, VGG at 64.
# Usage: bash experiments/configs/ablation.sh [RUNS_DIR]   (about 35 minutes on 2 CPU cores)
# Then:  python -m experiments.ablation_table RUNS_DIR
set -e
R=${1:-runs/ablation}
mkdir -p "$R"
P="python -m experiments.reconstruct --generator=${GEN:-demo-random} --real_image= --w_steps=1000 --noise_steps=1000 --log_every=250"
run() { name=$1; shift; $P "$@" --out="$R/$name" > "$R/$name.log" 2>&1; }
run abl_w_then_noise --schedule=w_then_noise          # the method
run abl_w_only --schedule=w_only                      # W+ 2000, noise left at its N(0, I) start
run abl_noise_then_w --schedule=noise_then_w
run abl_joint --schedule=joint                        # 2000 joint iterations
for lr in 1 0.1; do                                   # the noise phase again from the same W+ result
  run abl_noise_lr$lr --w_init="$R/abl_w_then_noise/rendered/w_plus_phase1.npy" --w_steps=0 --noise_lr=$lr
done
run abl_mse_only --percept=0                          # no perceptual term in the W+ phase
run abl_noise_const --noise_init=const                # start from the generator's stored maps
run abl_sgd --w_optimizer=sgd --w_lr=0.8              # the paper's SGD alternative
run abl_wlr0.05 --w_lr=0.05
run abl_3000 --w_steps=3000 --noise_steps=3000
