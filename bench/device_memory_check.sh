#!/usr/bin/env bash
# Issue 15 on a GPU, before and after, for the day a GPU machine is lent (device tool), under 5 minutes:
#   1. bench/memory_parts.py: the loss of one 4,000-token sequence through Qwen3's adapted lm_head (whole vs chunks)
#      and one Qwen3-30B-A3B MoE layer's expert LoRA (PEFT's fold vs grouped): peak CUDA memory and step time
#   2. bench/train_throughput.py: 4 of Qwen3-30B-A3B's 48 layers at real widths, the attn_experts and paper presets,
#      a whole training step before and after: ms/step, tokens/s, MFU, peak GiB
# Run from the repository root: OUT=/tmp/out bash bench/device_memory_check.sh
set -u
OUT=${OUT:-/tmp/device-memory-check}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
timeout -k 10 120 "${PY:-python3}" bench/memory_parts.py --device cuda 2>&1 | tee "$OUT/memory_parts.txt"
parts=${PIPESTATUS[0]}
timeout -k 10 150 "${PY:-python3}" bench/train_throughput.py qwen3-30b-a3b-shaped --layers 4 --seq 4096 --batch 1 \
    --steps 5 --presets attn_experts paper 2>&1 | tee "$OUT/train_step.txt"
step=${PIPESTATUS[0]}
echo "device_memory_check: memory_parts exit $parts, train_step exit $step"
[ "$parts" = 0 ] && [ "$step" = 0 ]
