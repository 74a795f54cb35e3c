#!/usr/bin/env bash
# sdlab against diffusers on a CUDA machine: fp16 weights, PyTorch SDPA attention (diffusers'
# default processor on torch 2), the SD-1.5-shaped random-weight model. Under 5 minutes on
# one modern GPU: the model is built once (about a minute on the CPU), then each size runs
# a warm-up and 5 interleaved rounds of 20 LMS steps per side.
#
#     bash benchmarks/gpu.sh [OUT_FOLDER]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-bench-gpu}"
mkdir -p "$OUT"
PY=.venv/bin/python
[ -x "$PY" ] || PY=python
SDLAB=.venv/bin/sdlab
[ -x "$SDLAB" ] || SDLAB=sdlab
export SDLAB_CACHE="${SDLAB_CACHE:-$PWD/$OUT/cache}"
"$PY" - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA device: this script is for a GPU machine"
print(torch.__version__, torch.cuda.get_device_name(0),
      "SDPA:", hasattr(torch.nn.functional, "scaled_dot_product_attention"))
PY
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
for size in 512 256; do
  timeout 200 "$SDLAB" bench --device cuda --model sd15 --size "$size" --steps 20 \
    --rounds 5 --json "$OUT/sd15-$size.json" | tee "$OUT/sd15-$size.txt"
done
timeout 60 "$SDLAB" bench --device cuda --quick --json "$OUT/quick.json" | tee "$OUT/quick.txt"
