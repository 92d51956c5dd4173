#!/bin/bash
# images/s of experiments.embed_folder at 1, 2 and 4 forced CPU devices, the global batch fixed at 4
# (8 images: the 6 shipped held-out photographs and two copies under other names; 2 batches each).
#
#   bash experiments/configs/folder_speed.sh /tmp/speed            # orders 1, 2, 4
#   ORDER="4x1 2x2 1x4" bash experiments/configs/folder_speed.sh /tmp/speed2   # the reverse pass
#
# Prints each run's summary line and its batches' seconds (the larger one compiled).
set -euo pipefail
work=${1:?give a scratch folder}
cd "$(dirname "$0")/../.."
mkdir -p "$work/imgs"
cp i2spp_jax/assets/fmnist_test/*.png "$work/imgs/"
cp i2spp_jax/assets/fmnist_test/test00000_ankle_boot.png "$work/imgs/x1.png"
cp i2spp_jax/assets/fmnist_test/test00002_trouser.png "$work/imgs/x2.png"
export XLA_FLAGS=--xla_force_host_platform_device_count=4 I2SPP_CACHE=$work/cache
for cfg in ${ORDER:-1x4 2x2 4x1}; do
  devices=${cfg%x*}; per_device=${cfg#*x}
  python -m experiments.embed_folder --images="$work/imgs" --out="$work/d$devices" --w_steps=150 \
    --noise_steps=150 --vgg=random --resize_to=64 --devices="$devices" --batch_per_device="$per_device" \
    2>/dev/null | grep "this session"
  python - "$work/d$devices" "$devices" <<'PY'
import glob, json, sys
runs = {(m["batch"]["id"], m["batch"]["seconds"]) for m in
        (json.load(open(p)) for p in glob.glob(f"{sys.argv[1]}/results/*/metrics.json"))}
print(f"devices {sys.argv[2]}: batch seconds", sorted(round(s, 2) for _, s in runs))
PY
done
