#!/bin/bash
# issue 9's GPU measurement, ready to run on a lent GPU machine (no network; jax CUDA and torch there).
# Needs two ignored paths carried beside the code (never committed):
#   .official/stylegan2-ada-pytorch   a checkout of NVlabs/stylegan2-ada-pytorch (dnnlib/, torch_utils/, training/ suffice)
#   .official/vgg16_trunk.npz         VGG16 conv1_1..conv3_3 (7 MB), written by any CPU run of experiments.benchmark
#                                      into its --out (e.g. runs/bench_cpu/vgg16_trunk.npz)
# Usage (from the repository root, one call of the device tool, about 8 minutes on one H100):
#   bash experiments/configs/gpu_benchmark.sh [OUT]
# It prints each table and leaves OUT/*/benchmark.json: config-f sizes (1024x1024, w 512, up to 512
# channels), VGG16 at 256, batches 1 and 8 (16 when time allows: add --batches=1,8,16).
set -e
OUT=${1:-runs/bench_gpu}
B="python -m experiments.benchmark --torch_repo=.official/stylegan2-ada-pytorch --vgg=.official/vgg16_trunk.npz --batches=1,8"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
# 1. TF32 on both sides (the official code's and JAX's GPU default), one iteration per dispatch
$B --numerics=tf32 --out="$OUT/tf32"
# 2. the same with 25 iterations per dispatch (lax.scan; the engine's default stays 1 until this is measured)
$B --numerics=tf32 --sides=jax --steps_per_call=25 --out="$OUT/tf32_scan25"
# 3. grouped convolutions instead of the engine's choice (modulated activations off the CPU)
$B --numerics=tf32 --sides=jax --modconv=grouped --out="$OUT/tf32_grouped"
# 4. strict float32 on both sides
$B --numerics=fp32 --out="$OUT/fp32"
