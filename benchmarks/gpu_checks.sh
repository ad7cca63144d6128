#!/usr/bin/env bash
# The GPU checks of this kit in one run (about 5 min on an H100): UNet step ratio, a 1000-step card call,
# and the sweep's batching gain, all on the SD v1-4 architecture with random weights (no hub access needed).
#   bash benchmarks/gpu_checks.sh [OUT_DIR]
# In this workplace's device tool, packages missing on the GPU machine travel as wheels in .whl/.
set -uo pipefail
OUT=${1:-${OUT:-outputs/gpu}}; mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
step() { echo; echo "=== $1 ($(date +%T))"; }

step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import sys, torch, diffusers, transformers, accelerate as a; print(sys.version.split()[0], 'torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__, 'accelerate', a.__version__)"

step "1. one SuperDiff step: paper loop (3 fp32 UNet calls) vs superdiff (1 batched fp16 call), 512²"
python3 benchmarks/bench_sd_unet.py --device cuda --size 512 --steps 10 --repeats 3 2>&1 | tee "$OUT/bench_unet.txt"
python3 benchmarks/bench_sd_unet.py --device cuda --size 512 --steps 10 --repeats 3 --batch 4 2>&1 | tee -a "$OUT/bench_unet.txt"

step "2. random SD v1-4 pipeline folder"
python3 benchmarks/random_sd.py /tmp/sd-random 2>&1 | tail -1

step "3. the card call, 1000 steps, 512², AND, fp16"
python3 benchmarks/bench_pipeline.py --model /tmp/sd-random --steps 1000 2>&1 | grep -v "Loading" | tee "$OUT/bench_pipeline.txt"

step "4. sweep: 5 pairs x AND x 8 seeds, 50 steps, batch 1 vs 8 on one GPU"
head -6 superdiff/sweep/pairs/paper_sd.csv > /tmp/pairs5.csv
for b in 1 8; do
  python3 -m superdiff.cli sweep --model /tmp/sd-random --pairs /tmp/pairs5.csv --methods and --seeds 0-7 \
    --steps 50 --scorer none --batch-size $b --out /tmp/sweep-b$b 2>&1 | grep -v "Loading\|sweep:" | tee "$OUT/sweep_b$b.txt"
  cp /tmp/sweep-b$b/summary.md "$OUT/sweep_b$b.md"
done
step "done"
