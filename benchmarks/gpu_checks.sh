#!/usr/bin/env bash
# The GPU checks of this kit in one run (at most 8 min on an H100), on the SD v1-4 architecture with random
# weights (no hub access needed):
#   1. the fast path (bench_fast.py): paper loop vs eager pipeline vs enable_fast_sampling, batch 1 and 4,
#      first-call compile time, peak memory, syncs/step, superposition share, and a measured 1000-step image;
#   2. the eager card call, 1000 steps end to end (bench_pipeline.py), if time is left;
#   3. the sweep's batching gain (batch 1 vs 8) and --fast at batch 8, if time is left;
#   4. the cost of the score Fokker–Planck residual on the SD UNet (bench_fpe.py), if time is left.
#   bash benchmarks/gpu_checks.sh [OUT_DIR]
# In this workplace's device tool, packages missing on the GPU machine travel as wheels in .whl/ (its image
# lacks diffusers and importlib_metadata: pip download --no-deps -d .whl diffusers==0.42.1 importlib_metadata==8.7.0).
set -uo pipefail
OUT=${1:-${OUT:-outputs/gpu}}; mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu_checks.log") 2>&1  # every line, the machine and the sweep's timings too, also in $OUT
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export TORCH_LOGS=recompiles  # a recompile per call would show here (an artifact every torch since 2.1 has)
LIMIT=470  # seconds for the whole script
step() { echo; echo "=== $1 ($(date +%T), ${SECONDS} s)"; }
# time_left N: true if N more seconds fit in LIMIT; else says the section is skipped
time_left() { [ $((SECONDS + $1)) -le $LIMIT ] || { echo "skipped: needs ~$1 s, $((LIMIT - SECONDS)) s left"; false; }; }
# left: the seconds left for a timeout, at least 1 (timeout 0 would mean none)
left() { echo $((LIMIT - SECONDS > 1 ? LIMIT - SECONDS : 1)); }

step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import sys, torch, diffusers, transformers, accelerate as a; print(sys.version.split()[0], 'torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__, 'accelerate', a.__version__)" \
  || { echo "diffusers, transformers or accelerate missing: pass .whl in the device tool's carry"; exit 1; }

step "1. fast path vs eager pipeline vs paper loop, 512², batch 1 and 4, + a measured 1000-step fast image"
timeout $((LIMIT - SECONDS - 10)) python3 benchmarks/bench_fast.py --device cuda --size 512 --batch 1 4 \
  --steps 20 --repeats 2 --full 1000 2>&1 | grep --line-buffered -v "^USDT" | tee "$OUT/bench_fast.txt"

step "2. the eager card call, 1000 steps, 512², AND, fp16"
if time_left 120; then  # bench_pipeline prints at its end: a timeout would lose it all
  timeout 60 python3 benchmarks/random_sd.py /tmp/sd-random 2>&1 | tail -1
  timeout $(left) python3 benchmarks/bench_pipeline.py --model /tmp/sd-random --steps 1000 2>&1 \
    | grep --line-buffered -v "Loading" | tee "$OUT/bench_pipeline.txt"
fi

step "3. sweep: 5 pairs x AND x 8 seeds, 50 steps, batch 1 vs 8 on one GPU (then batch 8 --fast, if time is left)"
if [ -f /tmp/sd-random/unet/diffusion_pytorch_model.safetensors ] && time_left 150; then
  head -6 superdiff/sweep/pairs/paper_sd.csv > /tmp/pairs5.csv
  for run in b1 b8 b8_fast; do
    fast=""
    if [ $run = b8_fast ]; then time_left 150 || break; fast=--fast; fi
    timeout $(left) python3 -m superdiff.cli sweep --model /tmp/sd-random --pairs /tmp/pairs5.csv --methods and --seeds 0-7 \
      --steps 50 --scorer none --batch-size ${run:1:1} $fast --out /tmp/sweep-$run 2>&1 \
      | grep --line-buffered -v "Loading\|sweep:"
    cp /tmp/sweep-$run/summary.md "$OUT/sweep_$run.md" || break
    python3 -c "import json, statistics as st, sys; s = [json.loads(l)['seconds'] for l in open(sys.argv[1])]
print(f'{sys.argv[2]}: s/image median {st.median(s):.3f}, max {max(s):.3f} (a first call)')" \
      /tmp/sweep-$run/records.jsonl $run
  done
fi
step "4. score Fokker–Planck residual on the SD v1-4 UNet, float32, 512², 1 and 4 probes"
if time_left 60; then
  timeout $(left) python3 benchmarks/bench_fpe.py --device cuda --repeats 2 2>&1 \
    | grep --line-buffered -v "^USDT" | tee "$OUT/bench_fpe.txt"
fi
step "done"
