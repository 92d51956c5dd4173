#!/bin/bash
# issue 9's GPU measurement, ready to run on a lent GPU machine (no network; jax CUDA and torch there).
# Needs two ignored paths carried beside the code (never committed):
#   .official/stylegan2-ada-pytorch   a checkout of NVlabs/stylegan2-ada-pytorch (dnnlib/, torch_utils/, training/ suffice)
#   .official/vgg16_trunk.npz         VGG16 conv1_1..conv3_3 (7 MB), written by any CPU run of experiments.benchmark
#                                      into its --out (e.g. runs/bench_cpu/vgg16_trunk.npz)
# Usage (from the repository root):
#   bash experiments/configs/gpu_benchmark.sh OUT [PART]
# PART: "base" (TF32 on both sides at batches 1 and 8, then 25 iterations per dispatch), "more" (the
# bfloat16 mode, 25 iterations per dispatch at batch 1, strict fp32 on both sides), "parts" (where the
# W+ step's time goes at batch 8: experiments.step_parts in TF32 and bf16), "levers" (the grouped
# convolution against modulated activations, and XLA's convolution autotuning off: its share of the
# first call), "probe" (one lease's worth, about 8 minutes: a kernel-by-kernel profile of the W+ step
# at batch 8 in TF32 and bf16 (experiments.profile_step), and the W+ step at batch 8 with 25 iterations
# per dispatch as it is, with XLA's convolutions forced to NHWC, with the grouped convolution, and with
# autotuning off, each step with a time limit, 560 s in all; everything lands in OUT/probe.tar.gz), "w8" (the W+ step alone at batch 8 with 25
# iterations per dispatch, TF32 then bf16: about 3 minutes), "alg2" / "alg2_tf32" (Algorithm 2, 5000 + 3000
# iterations at batch 8, timed end to end by experiments.time_algorithm2 in the bf16 mode / in TF32:
# about 5 minutes each), "alg2_levers" then "levers2" (what the fifth lease ran, two calls of the device
# tool, each under its 600 s limit; OUT/probe.tar.gz as for probe), "levers3" (the next lease's first
# call: the resize's gradient, the recomputed masks and the depthwise FIR, below), "levers4" (the ToRGB
# layers without cuDNN and the Pallas FIR, below), "alg2_diag"
# (Algorithm 2 in the bf16 mode as it is now, with XLA's per-program memory; below), "compile_diag" (where the first call's compile
# goes, by XLA's own spans; below), "b16" (batch 16, below), "w8_par16" (the W+ step with XLA's compile forced onto 16
# threads), "accuracy" (the
# bf16 mode's quality against TF32 and float32, below) or "all" (base, more, levers, parts).
# Config-f sizes (1024x1024, w 512, up to 512 channels), VGG16 at 256. Each benchmark writes its
# table into the log and OUT/NAME.json; the generator's weights (about 130 MB) stay in $BENCH_WORK.
# Every step has its own time limit, so that one failing or slow step leaves the others' numbers.
# Before anything runs, it refuses (one line, exit status 2) an unknown PART, a missing .official/, and a
# machine without a GPU (unless BENCH_FLAGS is set: a dry run at small sizes). An OUT that holds files of an
# earlier run is moved aside to OUT.old-<time> (nothing is deleted), so every file in OUT is this run's.
# It ends with exit status 1 when a step failed or ran out of its time (the others' numbers are kept).
OUT=${1:-runs/bench_gpu}
PART=${2:-all}
WORK=${BENCH_WORK:-/tmp/i2spp_bench}
PARTS="base more levers parts all b16 w8 levers3 levers4 alg2_levers levers2 alg2_diag compile_diag w8_par16 accuracy alg2 alg2_tf32 probe"
fail() { echo "error: $*" >&2; exit 2; }
[[ " $PARTS " == *" $PART "* ]] || fail "unknown PART '$PART'; usage: bash experiments/configs/gpu_benchmark.sh OUT [PART], PART one of: $PARTS"
[ -f .official/stylegan2-ada-pytorch/training/networks.py ] && [ -d .official/stylegan2-ada-pytorch/torch_utils ] \
  && [ -d .official/stylegan2-ada-pytorch/dnnlib ] \
  || fail "no .official/stylegan2-ada-pytorch (dnnlib/, torch_utils/, training/) here: run from the repository root, and carry it (see this script's header)"
[ -f .official/vgg16_trunk.npz ] || fail "no .official/vgg16_trunk.npz: write it with any CPU run of experiments.benchmark (its --out) and carry it"
if [ -z "$BENCH_FLAGS$PROFILE_FLAGS$ALG2_FLAGS$CS_FLAGS$ACC_FLAGS" ] && ! command -v nvidia-smi > /dev/null; then
  fail "no GPU here (nvidia-smi not found): the parts measure config-f sizes on a GPU; set BENCH_FLAGS (and PROFILE_FLAGS, ALG2_FLAGS, CS_FLAGS, ACC_FLAGS) to small sizes for a dry run"
fi
if [ -e "$OUT" ] && [ -n "$(ls -A "$OUT" 2>/dev/null)" ]; then
  old="$OUT.old-$(date +%Y%m%d-%H%M%S)"
  mv "$OUT" "$old" && echo "$OUT held an earlier run's files: moved to $old"
fi
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # both sides' processes share the GPU during a measurement
export PYTHONUNBUFFERED=1
mkdir -p "$OUT" "$WORK/shared" || fail "cannot make $OUT or $WORK"
rm -rf "$WORK/probe_files"  # pack() gathers this run's files there (an earlier run's would ride along)
FAILED=""
P="python3 -m experiments.profile_step --vgg=.official/vgg16_trunk.npz --top=60"
B="python3 -m experiments.benchmark --torch_repo=.official/stylegan2-ada-pytorch --vgg=.official/vgg16_trunk.npz $BENCH_FLAGS"  # BENCH_FLAGS: e.g. smaller sizes for a dry run

ended() {  # NAME STATUS T0: the step's line, and a failed step remembered for the exit status
  echo "=== $1: exit $2 after $((SECONDS - $3)) s"
  [ "$2" = 0 ] || FAILED="$FAILED $1"
}
step() {  # NAME SECONDS FLAGS...
  local name=$1 limit=$2 t0=$SECONDS
  shift 2
  mkdir -p "$WORK/$name"
  cp -n "$WORK"/shared/* "$WORK/$name/" 2>/dev/null  # the generator made by an earlier step
  echo "=== $name (limit $limit s): $*"
  timeout -k 10 "$limit" env $STEP_ENV $B --out="$WORK/$name" "$@"  # STEP_ENV: VAR=VALUE pairs for this step
  ended $name $? $t0
  pkill -f -- "--out=$WORK/$name .*--role=" 2>/dev/null  # a timed-out step's side processes (this step's only)
  cp "$WORK/$name/benchmark.json" "$OUT/$name.json" 2>/dev/null
  for e in "$WORK/$name"/*_stderr.txt; do [ -f "$e" ] && gzip -c "$e" > "$OUT/${name}_$(basename "$e").gz"; done  # the sides' warnings
  cp -n "$WORK/$name"/g*_s0.weights.npz "$WORK/$name"/g*_s0.json "$WORK/shared/" 2>/dev/null
}

profile() {  # NAME SECONDS FLAGS... (the kernels' HLO instruction is known only without command buffers)
  local name=$1 limit=$2 t0=$SECONDS
  shift 2
  echo "=== $name (limit $limit s): $*"
  XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }--xla_gpu_enable_command_buffer=" timeout -k 10 "$limit" $P --out="$WORK/$name" "$@" $PROFILE_FLAGS  # PROFILE_FLAGS (last, so they win): e.g. a dry run at --preset=cpu
  ended $name $? $t0
  cp "$WORK/$name/profile.json" "$OUT/$name.json" 2>/dev/null
  cp "$WORK/$name/hlo.txt.gz" "$OUT/${name}_hlo.txt.gz" 2>/dev/null
}

command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import sys, jax, flax, optax, orbax.checkpoint, torch; print('python', sys.version.split()[0], \
'jax', jax.__version__, jax.devices(), 'flax', flax.__version__, 'optax', optax.__version__, 'torch', torch.__version__)"

if [ "$PART" = base ] || [ "$PART" = all ]; then
  step tf32 330 --numerics=tf32 --batches=1,8
  step tf32_scan25 100 --numerics=tf32 --sides=jax --batches=8 --steps_per_call=25
fi
if [ "$PART" = more ] || [ "$PART" = all ]; then
  step bf16_scan25 190 --numerics=bf16 --sides=jax --batches=1,8 --steps_per_call=25
  step tf32_scan25_b1 80 --numerics=tf32 --sides=jax --batches=1 --steps_per_call=25
  step fp32 150 --numerics=fp32 --batches=8 --iters=25
fi
if [ "$PART" = levers ] || [ "$PART" = all ]; then
  step tf32_grouped_scan25 150 --numerics=tf32 --sides=jax --batches=1,8 --steps_per_call=25 --modconv=grouped
  XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }--xla_gpu_autotune_level=0" \
    step tf32_noautotune_scan25 100 --numerics=tf32 --sides=jax --batches=8 --steps_per_call=25
fi
# "b16" (about 6 minutes): the issue's third batch size, never yet run on a GPU: both sides in TF32 at
# batch 16 (one step per dispatch, the official code's way), then this project alone with 25 per
# dispatch in TF32 and in the bf16 mode.
if [ "$PART" = b16 ]; then
  step b16_tf32 200 --numerics=tf32 --batches=16
  step b16_tf32_scan25 90 --numerics=tf32 --sides=jax --batches=16 --steps_per_call=25
  step b16_bf16_scan25 90 --numerics=bf16 --sides=jax --batches=16 --steps_per_call=25
fi
if [ "$PART" = w8 ]; then  # the headline W+ step alone (about 3 minutes): batch 8, 25 per dispatch, TF32 then bf16
  step w8_tf32_scan25 100 --numerics=tf32 --sides=jax --steps=w --batches=8 --steps_per_call=25
  step w8_bf16_scan25 100 --numerics=bf16 --sides=jax --steps=w --batches=8 --steps_per_call=25
fi
pack() {  # after every step, so that a run cut short still brings back what it measured (one file)
  mkdir -p "$WORK/probe_files" && mv "$OUT"/*.json "$OUT"/*_hlo.txt.gz "$OUT"/*_stderr.txt.gz "$OUT"/*.textproto.gz \
    "$WORK/probe_files/" 2>/dev/null
  tar czf "$OUT/probe.tar.gz" -C "$WORK/probe_files" .
}
w8_variants() {  # DEFAULT_LIMIT "NAME [VAR=VALUE...] FLAGS..." ...: the W+ step at batch 8, 25 per dispatch,
  # one step per variant (w8_NAME; its numerics NAME's prefix; VAR=VALUE its environment), each only while
  # CALL_LIMIT (else DEFAULT_LIMIT) leaves 75 s
  local limit=${CALL_LIMIT:-$1} W8="--sides=jax --steps=w --batches=8 --steps_per_call=25" v nm left envs
  shift
  for v in "$@"; do
    set -- $v; nm=$1; shift; envs=""
    while [ $# -gt 0 ] && [[ "$1" != --* ]]; do envs="$envs $1"; shift; done
    left=$((limit - SECONDS))
    if [ $left -gt 75 ]; then
      STEP_ENV="$envs" step w8_$nm $((left < 100 ? left : 100)) --numerics=${nm%%_*} $W8 "$@"; pack
    else echo "=== w8_$nm: skipped, $left s left"; fi
  done
}
# "levers3" (about 6 minutes, CALL_LIMIT s in all, default 400): the CPU sessions' three levers, weighed
# there with experiments.gpu_hlo, each in the same call as the code as it is: the W+ step at batch 8, 25
# per dispatch, in bf16 as it is (the resize's gradient phase by phase and the layers' masks recomputed:
# predicted about 430 img-it/s, from 404.7), in bf16 with autodiff's stored masks (--epilogue_grad=
# autodiff: 1.57 GB more per step), in bf16 with the FIR as a depthwise convolution (--up_method=
# polyphase_last_dw: no scalar-load FIR fusions; predicted 0.6-1.1 ms less per bf16 step, depending on
# cuDNN's depthwise kernels), then in TF32 as it is (predicted about 277, from 264-271) and with the
# depthwise FIR, each only while CALL_LIMIT leaves 75 s.
if [ "$PART" = levers3 ]; then
  w8_variants 400 "bf16" "bf16_autodiff --epilogue_grad=autodiff" "bf16_dw --up_method=polyphase_last_dw" "tf32" \
    "tf32_dw --up_method=polyphase_last_dw"
fi
# "levers4" (about 8-9 minutes, CALL_LIMIT s in all, default 540): the W+ step at batch 8, 25 per
# dispatch, each process compiling cold (its first call is the compile goal's measure), each only while
# CALL_LIMIT leaves 75 s, in this order:
#  - bf16 as it is: since the sixth lease (447 img-it/s, first call 30.9-31.8 s) the loop computes its
#    loop-invariant work once per dispatch (XLA's GPU compiler does not hoist it; engine/hoist.py: 508 ->
#    410 kernels and 30.81 -> 30.37 GB per iteration on a compile-only H200) and VGG16's ReLU fuses into
#    cuDNN's convolutions (the first call autotunes 64 distinct convolutions, not 70);
#  - bf16 with the hoisting off (I2SPP_LOOP_HOISTING=0): that lever's share;
#  - bf16 and TF32 with the ToRGB layers without cuDNN (--torgb_method=reduce: 46 distinct convolutions to
#    autotune, not 64; bytes about equal in bf16, 3% fewer in TF32);
#  - TF32 as it is (388 kernels per iteration, 427 before the hoisting);
#  - bf16 with the FIR after the transposed up-sampling convolutions as one Pallas kernel each way
#    (--up_method=polyphase_last_pl: no scalar-load FIR passes), then with both levers;
# then, while it leaves 110 s (CALL_LIMIT=600 and a quick start), a kernel profile of the bf16 step.
# Run on the seventh lease (483 s; docs/bench_h200/call14_*): bf16 454.6, no hoisting 452.3, ToRGB reduce 470.7,
# TF32 288.5, TF32 reduce 283.0, Pallas FIR 472.3, both 484.4 img-it/s. Since then "bf16" here is the ToRGB
# reduce (torgb_method "auto"); pass --torgb_method=conv for the convolution. Do not tee into OUT: a file
# there before the script starts is moved aside as an earlier run's.
if [ "$PART" = levers4 ]; then
  w8_variants 540 "bf16" "bf16_nohoist I2SPP_LOOP_HOISTING=0" "bf16_reduce --torgb_method=reduce" \
    "tf32" "tf32_reduce --torgb_method=reduce" "bf16_pl --up_method=polyphase_last_pl" \
    "bf16_both --torgb_method=reduce --up_method=polyphase_last_pl"
  # then the bf16 step kernel by kernel (the last bf16 profile is the fourth lease's, of older code)
  left=$((${CALL_LIMIT:-540} - SECONDS))
  if [ $left -gt 110 ]; then profile prof_bf16 $((left < 120 ? left : 120)) --preset=ffhq --batch=8 \
    --numerics=bf16 --rounds=3 --calls=2; pack
  else echo "=== prof_bf16: skipped, $left s left"; fi
fi
alg2() {  # NAME SECONDS DTYPE: Algorithm 2 timed end to end at batch 8
  local t0=$SECONDS
  echo "=== $1 (limit $2 s)"
  timeout -k 10 "$2" python3 -m experiments.time_algorithm2 --preset=ffhq --batch=8 --compute_dtype=$3 \
    --vgg=.official/vgg16_trunk.npz --out="$WORK/$1" $ALG2_FLAGS  # ALG2_FLAGS: e.g. small sizes for a dry run
  ended $1 $? $t0
  cp "$WORK/$1/algorithm2.json" "$OUT/$1.json" 2>/dev/null
}
# "alg2_levers" then "levers2": what the fifth lease ran (two calls; records docs/bench_h200/call9_* and
# call10_*; they replaced the former "next" and "next2", which held the same steps in another order).
# "alg2_levers" (about 9 minutes, CALL_LIMIT=560): Algorithm 2 end to end in the bf16 mode as it was then (a float32 head and tail, float32 past the automatic threshold; ALG2_LIMIT s, default 330), then
# the W+ step at batch 8 (25 per dispatch) in bf16 and in TF32, each as it is and with the ToRGB layers
# as matrix products, each step only while CALL_LIMIT leaves 75 s. "levers2" (about 3-4 minutes): bf16
# with the FIR folded in the last two blocks, then, while CALL_LIMIT leaves time, polyphase_last2 in
# TF32 and the persistent-cache pair (the TF32 step cold, then again from the cache).
if [ "$PART" = alg2_levers ]; then
  M="--up_method=${UP_METHOD:-auto} --torgb_method=${TORGB_METHOD:-conv}"
  ALG2_FLAGS="${ALG2_FLAGS:+$ALG2_FLAGS }$M" alg2 alg2_bf16 "${ALG2_LIMIT:-330}" bfloat16; pack
  w8_variants 560 "bf16" "bf16_torgbmm --torgb_method=matmul" "tf32" "tf32_torgbmm --torgb_method=matmul"
fi
if [ "$PART" = levers2 ]; then
  W8="--sides=jax --steps=w --batches=8 --steps_per_call=25"
  step w8_bf16_last2 100 --numerics=bf16 $W8 --up_method=polyphase_last2; pack
  # (the fifth lease also ran the TF32 step with --xla_gpu_enable_llvm_module_compilation_parallelism=true
  # here: jax 0.11.2's XLA refused the flag as unknown, so that lever does not exist there)
  left=$((${CALL_LIMIT:-300} - SECONDS))
  if [ $left -gt 75 ]; then step w8_tf32_last2 $((left < 100 ? left : 100)) --numerics=tf32 $W8 --up_method=polyphase_last2; pack
  else echo "=== w8_tf32_last2: skipped, $left s left"; fi
  left=$((${CALL_LIMIT:-300} - SECONDS))
  if [ $left -gt 120 ]; then
    rm -rf "$WORK/xla_cache"
    C="--numerics=tf32 $W8 --compilation_cache=$WORK/xla_cache"
    step w8_tf32_cache_cold 75 $C; pack
    step w8_tf32_cache_hit 45 $C; pack
  else echo "=== w8_tf32_cache_*: skipped ($left s left)"; fi
fi
# "alg2_diag" (up to ALG2_LIMIT s, default 540; the next lease's first call): on the fifth lease Algorithm
# 2 in the bf16 mode as it is now (float32 head, tail and switch; polyphase_last) did not finish inside
# its 330 s limit, where the fourth lease's version (tail only, transposed up-sampling) took 238 s with
# its compile. It printed nothing but XLA's warnings, four of them that a program could not be brought
# under 106 GiB by rematerialisation (259-519 GiB estimated). The benchmark's W+ steps ran normally in
# the same lease; their sides' warnings were discarded then (now kept: OUT/*_stderr.txt.gz). The CPU
# then found that the automatic threshold's two renders used the grouped convolution, one group per
# image, which exhausted 24 GB for 8 config-f images; they now render as the steps do. Predicted, if
# that was the trouble: about 20.5 s per image (BUILD_NOTES.md, "GPU, fifth lease"). This part runs the same
# Algorithm 2 with a longer limit, a progress line every 1000 iterations (PSNR and rate: where it is,
# and whether it switched), JAX's compile log (which program compiled when, next to XLA's warnings),
# and XLA's dump of every compiled module, summarised by experiments/configs/xla_memory_summary.py
# (each module's buffer total and largest buffers; the largest module's HLO comes back gzipped).
if [ "$PART" = alg2_diag ]; then
  D="$WORK/dump_alg2"; rm -rf "$D"
  XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }--xla_dump_to=$D --xla_dump_hlo_as_text" JAX_LOG_COMPILES=1 \
    alg2 alg2diag_bf16 "${ALG2_LIMIT:-540}" bfloat16
  python3 experiments/configs/xla_memory_summary.py "$D" > "$OUT/alg2diag_memory.txt"
  head -12 "$OUT/alg2diag_memory.txt" | cut -c1-400
  big=$(head -1 "$OUT/alg2diag_memory.txt" | awk '{print $3}')
  [ -n "$big" ] && gzip -c "$D/$big.txt" > "$OUT/alg2diag_largest_hlo.txt.gz"
fi
# "compile_diag" (about 4-5 minutes; the next lease's second call, CALL_LIMIT s in all, default 300): where
# the cold first call's 33-36 s go (issue 9's goal: 30 s). experiments.compile_split compiles the W+ step
# at batch 8 (25 iterations per dispatch) under the profiler and sums XLA's own spans (HLO passes,
# autotuning, LLVM, the PTX assembler) with each thread's busy time, then runs it twice (one call's
# rate: a check). In TF32 as it is, with XLA's autotuning log (OUT/cs_tf32_autotune_logs.textproto.gz:
# each tuned instruction and its candidates' run times); then with autotuning off (level 0: each
# convolution keeps cuDNN's first choice), which the second lease could not time inside 60 s; in bf16;
# then, while CALL_LIMIT leaves time, with --xla_gpu_force_compilation_parallelism=16 (if this XLA knows
# it: checked first).
# The order follows experiments.gpu_hlo: compiled for a compile-only H200 on the 2-core CPU, without
# autotuning, the same program took 8.5-10.8 s of XLA, its 252-254 LLVM modules already split over a
# thread pool; so most of the lent machine's 28.4 s is predicted to be autotuning (BUILD_NOTES.md).
if [ "$PART" = compile_diag ]; then
  cs() {  # NAME SECONDS FLAGS...
    local name=$1 limit=$2 t0=$SECONDS
    shift 2
    echo "=== $name (limit $limit s): XLA_FLAGS=${XLA_FLAGS:-} $*"
    timeout -k 10 "$limit" python3 -m experiments.compile_split --preset=ffhq --batch=8 \
      --vgg=.official/vgg16_trunk.npz --out="$WORK/$name" "$@" $CS_FLAGS  # CS_FLAGS (last): e.g. a dry run's sizes
    ended $name $? $t0
    cp "$WORK/$name/compile_split.json" "$OUT/$name.json" 2>/dev/null
  }
  knows() { XLA_FLAGS="$1" python3 -c "import jax.numpy as jnp; jnp.ones(1).block_until_ready()" >/dev/null 2>&1; }
  # XLA's autotuning log of the TF32 compile (each tuned instruction and every candidate's run time), if this
  # XLA knows the flag: which convolutions the autotuning spends its time on.
  ATL="--xla_gpu_dump_autotune_logs_to=$WORK/cs_tf32_autotune_logs.textproto"
  if knows "$ATL"; then XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }$ATL" cs cs_tf32 100 --numerics=tf32
    L="$WORK/cs_tf32_autotune_logs.textproto"; [ -s "$L" ] && gzip -c "$L" > "$OUT/cs_tf32_autotune_logs.textproto.gz"
  else cs cs_tf32 100 --numerics=tf32; fi
  pack
  XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }--xla_gpu_autotune_level=0" cs cs_tf32_autotune0 100 --numerics=tf32; pack
  cs cs_bf16 100 --numerics=bf16; pack
  left=$((${CALL_LIMIT:-300} - SECONDS))
  PAR=--xla_gpu_force_compilation_parallelism=16
  if [ $left -lt 70 ]; then echo "=== cs_tf32_par16: skipped, $left s left"
  elif knows "$PAR"; then XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }$PAR" cs cs_tf32_par16 $((left - 10)) --numerics=tf32; pack
  else echo "=== cs_tf32_par16: skipped, XLA does not know $PAR"; fi
fi
# "w8_par16" (about 3 minutes; a third call, if compile_diag found the forced compile threads shorter):
# the headline W+ step (batch 8, 25 per dispatch) in TF32 and bf16 with them, so that the first call is
# timed as the goal counts it (the benchmark's first call) and the rate is checked unchanged.
if [ "$PART" = w8_par16 ]; then
  W8="--sides=jax --steps=w --batches=8 --steps_per_call=25"
  export XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }--xla_gpu_force_compilation_parallelism=16"
  step w8_tf32_par16 100 --numerics=tf32 $W8; pack
  step w8_bf16_par16 100 --numerics=bf16 $W8; pack
fi
# "accuracy" (ACC_LIMIT s per precision, default 240; resumes where a cut-short call stopped): the bf16
# mode's accuracy on the GPU (issue 9's "< 0.1 dB"): experiments.bf16_accuracy on the demo generator,
# seeds 0-2, every variant, against TF32 (--precision=default, what users run) and then full float32.
if [ "$PART" = accuracy ]; then
  for pr in default highest; do
    t0=$SECONDS
    echo "=== acc_$pr (limit ${ACC_LIMIT:-240} s)"
    timeout -k 10 "${ACC_LIMIT:-240}" python3 -m experiments.bf16_accuracy --precision=$pr \
      --vgg=.official/vgg16_trunk.npz --out="$WORK/acc_$pr" $ACC_FLAGS  # ACC_FLAGS: e.g. --w_steps=20 for a dry run
    ended acc_$pr $? $t0
    cp "$WORK/acc_$pr/summary.json" "$OUT/acc_$pr.json" 2>/dev/null
    (cd "$WORK" && tar czf "$OUT/acc_$pr.tar.gz" acc_$pr/runs/*/result.json 2>/dev/null)
  done
fi
if [ "$PART" = alg2 ]; then alg2 alg2 "${ALG2_LIMIT:-540}" bfloat16; fi  # Algorithm 2 alone, batch 8 (about 5 minutes each)
if [ "$PART" = alg2_tf32 ]; then alg2 alg2_tf32 "${ALG2_LIMIT:-540}" float32; fi
if [ "$PART" = probe ]; then
  profile prof_tf32 110 --preset=ffhq --batch=8 --numerics=tf32; pack
  step w_tf32_scan25 120 --numerics=tf32 --sides=jax --steps=w --batches=8 --steps_per_call=25; pack
  XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }--xla_gpu_force_conv_nhwc=true" \
    step w_tf32_nhwc_scan25 90 --numerics=tf32 --sides=jax --steps=w --batches=8 --steps_per_call=25; pack
  step w_tf32_grouped_scan25 90 --numerics=tf32 --sides=jax --steps=w --batches=8 --steps_per_call=25 --modconv=grouped; pack
  profile prof_bf16 90 --preset=ffhq --batch=8 --numerics=bf16; pack
  XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }--xla_gpu_autotune_level=0" \
    step w_tf32_noautotune_scan25 60 --numerics=tf32 --sides=jax --steps=w --batches=8 --steps_per_call=25; pack
fi
if [ "$PART" = parts ] || [ "$PART" = all ]; then
  for nm in tf32 bf16; do
    t0=$SECONDS
    echo "=== parts_$nm"
    timeout -k 10 200 python3 -m experiments.step_parts --preset=ffhq --batch=8 --numerics=$nm \
      --vgg=.official/vgg16_trunk.npz --out="$WORK/parts_$nm"
    ended parts_$nm $? $t0
    cp "$WORK/parts_$nm/step_parts.json" "$OUT/parts_$nm.json" 2>/dev/null
  done
fi
if [ -n "$FAILED" ]; then echo "=== did not finish:$FAILED (their logs above; the others' records are in $OUT)"; exit 1; fi
