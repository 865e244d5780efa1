#!/usr/bin/env bash
# The GPU-only checks, in one run under 10 minutes, for the day a GPU machine is lent (device tool):
#   1. bench/device_fsdp_check.sh: accelerate launch with slurm/accelerate/fsdp.yaml as shipped on the tiny Qwen3-MoE:
#      stop on the stop file with a sharded checkpoint that carries its PEFT adapter, resume, finish; compared with
#      an uninterrupted FSDP run and a plain single-GPU run (summary.json)
#   2. bench/device_moe_lora_check.py: fused-expert adapters as LoRA in one vLLM engine through their per-expert
#      export vs transformers + PEFT (where vLLM is installed; otherwise the transformers half and a note)
# Run from the repository root, the carried wheels in .device_wheels/ (see bench/device_fsdp_check.sh):
#   OUT=/tmp/out bash bench/device_check.sh
set -u
OUT=${OUT:-/tmp/device-check}
mkdir -p "$OUT/fsdp"
started=$(date +%s)
OUT="$OUT/fsdp" timeout -k 10 360 bash bench/device_fsdp_check.sh
fsdp=$?
PYTHONPATH="/tmp/fsdpcheck/site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}" timeout -k 10 200 \
    "${PY:-python3}" bench/device_moe_lora_check.py --adapters 4 --probes 40 2>&1 | tee "$OUT/moe_lora.log"
lora=${PIPESTATUS[0]}
echo "device_check: fsdp exit $fsdp, expert-LoRA exit $lora, $(($(date +%s) - started)) s"
grep -E "CHECKPOINT ADAPTER" "$OUT/fsdp/check.log"
[ "$fsdp" = 0 ] && [ "$lora" = 0 ]
