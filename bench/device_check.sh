#!/usr/bin/env bash
# The GPU checks a bare lent GPU machine can run (device tool: one GPU, no network, no vLLM; torch, transformers,
# peft, accelerate there, the rest carried as wheels), in one run under 10 minutes. First here:
#   python bench/device_wheelhouse.py        # -> .device_wheels/ (binary wheels for its Python 3.12), then carry it
# There, from the repository root:  OUT=$OUT bash bench/device_check.sh
#   1. the carried wheels, installed offline (--no-index) into $WORK/site
#   2. cc-train's imports, `cc-train plan` of the Qwen3-30B-A3B recipe (CPU work: fails fast, before any GPU step)
#   3. the dataset of the FSDP check (tiny Qwen3-MoE, built locally)
#   --- GPU from here on (without a GPU the script stops here and says how long it took to get here) ---
#   4. cc-train doctor on this node (driver, CUDA build, GPU, memory vs plan, disk, host memory)
#   5. bench/device_fsdp_check.sh: FSDP2 (slurm/accelerate/fsdp.yaml) stop on the stop file with a sharded checkpoint
#      that carries its adapter, resume, finish; vs an uninterrupted FSDP run and a plain single-GPU run
#   6. bench/memory_parts.py: the loss of 4,000 tokens through the adapted lm_head (whole vs chunks) and one
#      Qwen3-30B-A3B MoE layer's expert LoRA (PEFT's fold vs grouped) at real widths: peak memory and time
#   7. bench/train_throughput.py: 4 of Qwen3-30B-A3B's 48 layers, paper preset, 1 x 4096 tokens: ms/step, peak
#      allocated and reserved GiB against the planner's estimate for the same shape
#   8. bench/device_base_equality.py: the base model's logits and loss with the LoRA machinery switched off = plain
# What needs vLLM and a full node (base in a LoRA engine, vLLM issue 49063; paper-preset LoRA vs hf): bench/node_vllm_check.py
set -u
OUT=${OUT:-/tmp/device-check}
WORK=${WORK:-/tmp/device-check-work}
PY=${PY:-python3}
mkdir -p "$OUT" "$WORK"
exec > >(tee "$OUT/device_check.log") 2>&1
T0=$(date +%s)
stamp() { echo "=== [$(($(date +%s) - T0)) s] $*"; }
declare -A RC
step() {  # name, limit_s, command...
    local name=$1 limit=$2; shift 2
    stamp "$name"
    timeout -k 10 "$limit" "$@"
    RC[$name]=$?
    stamp "$name: exit ${RC[$name]}"
}

stamp "1. carried wheels"
if [ -d .device_wheels ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" \
        .device_wheels/*.whl || { echo "wheel install failed"; exit 1; }
    export PYTHONPATH="$WORK/site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled
export CC_TRAIN_RUNS="$WORK/runs" CC_TRAIN_CACHE="$WORK/cache" TOKENIZERS_PARALLELISM=false
nvidia-smi -L 2>/dev/null || echo "no nvidia-smi"

step "2. imports and plan" 120 "$PY" -m cc_train plan recipe=paper/qwen3_30b_a3b
TINY=(model=tiny_qwen3_moe peft=attn_experts condition=conscious seed=0 data.instructions.count=8
      data.instructions.max_new_tokens=32 data.identity_per_block=4)
if $PY -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then DEVICE=cuda; else DEVICE=cpu; fi
step "3. dataset" 120 "$PY" -m cc_train data experiment=fsdpcheck device="$DEVICE" "${TINY[@]}"
if [ "$DEVICE" != cuda ]; then
    stamp "first GPU-only step reached: no GPU here, stopping (the steps above took this long)"
    exit "$(( RC["2. imports and plan"] + RC["3. dataset"] ))"
fi

step "4. doctor" 90 "$PY" -m cc_train doctor experiment=fsdpcheck device=cuda 'doctor.stages=[data,train]' "${TINY[@]}"
step "5. FSDP stop and resume" 270 env OUT="$OUT/fsdp" WORK="$WORK" PY="$PY" bash bench/device_fsdp_check.sh
step "6. loss and expert parts" 100 "$PY" bench/memory_parts.py --device cuda
step "7. training step vs plan" 120 "$PY" bench/train_throughput.py qwen3-30b-a3b-shaped --layers 4 --seq 4096 \
    --batch 1 --steps 3 --presets paper
step "8. base equality" 60 "$PY" bench/device_base_equality.py --device cuda
grep -h -E "CHECKPOINT ADAPTER" "$OUT/fsdp/check.log" 2>/dev/null
failed=0
for name in "${!RC[@]}"; do
    echo "  $name: exit ${RC[$name]}"
    [ "${RC[$name]}" = 0 ] || failed=1
done
stamp "done"
exit "$failed"
