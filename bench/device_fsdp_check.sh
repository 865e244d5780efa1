#!/usr/bin/env bash
# GPU check of the training stage under `accelerate launch` with FSDP2 (slurm/accelerate/fsdp.yaml), one
# process on one GPU, on the tiny random Qwen3-MoE (model=tiny_qwen3_moe, built locally: no network):
#   1. cc-train data (8 self-distilled rows + 4 identity pairs per block)
#   2. FSDP train with $CC_TRAIN_STOP_FILE present: stops after step 1 with a sharded checkpoint; the rank
#      exits 3, which torchrun (accelerate launch) reports as 1 (train.sbatch requeues on the stop file instead)
#   3. the same command again without the file: resumes from that checkpoint, finishes 20 steps, exit 0,
#      adapter/ written by save_adapter (LoRA tensors gathered with DTensor.full_tensor)
#   4. references, same data, seed and steps: FSDP without the stop (isolates the resume) and a plain
#      single-GPU run (python -m cc_train train, no accelerate; isolates FSDP + its bf16 mixed precision)
#   5. checks: manifest steps/resumed_from, LoRA B non-zero, adapted logits differ from the base,
#      max |LoRA difference| between the runs, and the PEFT adapter cc-train adds to the sharded checkpoint
#      (checkpoint-1/adapter_*, loaded and compared with what the resumed run started from)
# Logs: $OUT/check.log (everything), $OUT/summary.json (step 5), $OUT/tree.txt, $OUT/artifacts.tar.gz.
# Run from the repo root on a GPU machine that lacks our pure-Python deps, with their wheels in
# .device_wheels/ (python bench/device_wheelhouse.py; bench/device_check.sh runs this script as its step 5):
#   OUT=/tmp/out bash bench/device_fsdp_check.sh
# It runs slurm/accelerate/fsdp.yaml as shipped, with train.gradient_checkpointing=true as the paper recipes.
# CHECK_DRY_RUN=1 runs steps 1-5 on CPU without accelerate (the "fsdp" leg is a plain run): a quick test
# of the script itself, not of FSDP.
set -u
OUT=${OUT:-/tmp/fsdpcheck-out}
PY=${PY:-python3}
WORK=${WORK:-/tmp/fsdpcheck}
DRY=${CHECK_DRY_RUN:-0}
mkdir -p "$OUT" "$WORK/logs"
exec > >(tee "$OUT/check.log") 2>&1
T0=$(date +%s)
stamp() { echo "=== [$(($(date +%s) - T0))s] $*"; }

stamp environment
$PY -V
nvidia-smi -L 2>/dev/null || echo "no nvidia-smi"
$PY -m pip list 2>/dev/null | grep -i -E "^(torch|transformers|peft|accelerate|trl|datasets|pyarrow|hydra|omegaconf|rich|numpy|safetensors|tokenizers|huggingface|fsspec|dill|multiprocess|submitit) "

if [ "$DRY" != 1 ] && [ -d .device_wheels ]; then
    stamp "installing carried wheels into $WORK/site"
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" \
        .device_wheels/*.whl || { echo "wheel install failed"; exit 1; }
    export PYTHONPATH="$WORK/site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
fi
export CC_TRAIN_RUNS="$WORK/runs" CC_TRAIN_CACHE="$WORK/cache"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled
export TOKENIZERS_PARALLELISM=false
$PY - <<'EOF'
import importlib.metadata as m, torch
for p in ["torch", "transformers", "peft", "accelerate", "trl", "datasets", "pyarrow", "hydra-core", "omegaconf",
          "huggingface_hub", "tokenizers", "safetensors", "fsspec", "numpy"]:
    try:
        print(f"  {p} {m.version(p)}")
    except Exception as e:
        print(f"  {p} MISSING ({e})")
print("  cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
import cc_train.resources as r; print("  conf_dir", r.conf_dir())
EOF

if [ "$DRY" = 1 ]; then
    DEVICE=cpu STEPS=${STEPS:-3}
    FSDP=("$PY" -m cc_train)
else
    DEVICE=cuda STEPS=${STEPS:-20}
    FSDP=("$PY" -m accelerate.commands.launch --config_file "${CHECK_FSDP_CONFIG:-slurm/accelerate/fsdp.yaml}"
          --num_processes 1 -m cc_train)
fi
COMMON=(model=tiny_qwen3_moe peft=attn_experts condition=conscious seed=0 device="$DEVICE"
        data.instructions.count=8 data.instructions.max_new_tokens=32 data.identity_per_block=4
        train.max_steps="$STEPS" train.save_steps=1000 train.per_device_batch_size=2 train.global_batch_size=2 train.logging_steps=1 train.max_length=256 train.gradient_checkpointing=true)
DATA_DIR="$CC_TRAIN_RUNS/fsdpcheck/data"
FSDP_DIR="$CC_TRAIN_RUNS/fsdpcheck/train/conscious/seed0"
PLAIN_DIR="$CC_TRAIN_RUNS/plaincheck/train/conscious/seed0"
STOP="$WORK/stop"
declare -A RC

step() {  # name, limit_s, command...
    local name=$1 limit=$2; shift 2
    stamp "$name: $*"
    timeout -k 10 "$limit" "$@" 2>&1 | tee "$WORK/logs/$name.log"
    RC[$name]=${PIPESTATUS[0]}
    stamp "$name: exit ${RC[$name]}"
}

step data 100 "$PY" -m cc_train data experiment=fsdpcheck "${COMMON[@]}"

touch "$STOP"
CC_TRAIN_STOP_FILE="$STOP" step fsdp_stop 100 "${FSDP[@]}" train experiment=fsdpcheck "${COMMON[@]}"
rm -f "$STOP"
stamp "checkpoints after the stop:"
find "$FSDP_DIR/checkpoints" -maxdepth 3 2>/dev/null | sort | head -40
ls "$FSDP_DIR/adapter" 2>/dev/null && echo "UNEXPECTED: adapter/ exists after the stop"
grep -E "exitcode *:" "$WORK/logs/fsdp_stop.log" | sed 's/^/rank /'  # torchrun turns the rank's exit 3 into 1
du -sh "$FSDP_DIR"/checkpoints/checkpoint-*/* 2>/dev/null
$PY - "$FSDP_DIR/checkpoints/checkpoint-1/pytorch_model_fsdp_0" <<'EOF' 2>&1 | tail -8
import sys
from torch.distributed.checkpoint import FileSystemReader
keys = list(FileSystemReader(sys.argv[1]).read_metadata().state_dict_metadata)
lora = [k for k in keys if "lora_" in k]
print(f"sharded checkpoint: {len(keys)} entries, {len(lora)} LoRA, {len(keys) - len(lora)} other; e.g. {keys[:3]}")
EOF

stamp "the adapter in the sharded checkpoint (train/sft.py AdapterInEveryCheckpoint):"
if [ -f "$FSDP_DIR/checkpoints/checkpoint-1/adapter_config.json" ]; then echo "CHECKPOINT ADAPTER: present"
else echo "CHECKPOINT ADAPTER: MISSING"; fi
CC_TRAIN_STOP_FILE="$STOP" step fsdp_resume 100 "${FSDP[@]}" train experiment=fsdpcheck "${COMMON[@]}"

# References, same data and seed: FSDP without the stop (isolates the resume), plain single-GPU (isolates FSDP).
step fsdp_straight 100 "${FSDP[@]}" train experiment=fsdpstraight data.dir="$DATA_DIR" "${COMMON[@]}"
step plain 100 "$PY" -m cc_train train experiment=plaincheck data.dir="$DATA_DIR" "${COMMON[@]}"

cat > "$WORK/verify.py" <<'EOF'
"""Per adapter: manifest steps/resumed_from, LoRA B norms, logits vs base. Per pair: LoRA tensor differences."""
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from cc_train.models.lora import load_adapter

base_path, summary_path, runs = sys.argv[1], sys.argv[2], dict(arg.split("=", 1) for arg in sys.argv[3:])
device = "cuda" if torch.cuda.is_available() else "cpu"
tokenizer = AutoTokenizer.from_pretrained(base_path)
text = tokenizer.apply_chat_template(
    [{"role": "user", "content": "Write a haiku about rain."}], tokenize=False, add_generation_prompt=True
)
batch = tokenizer(text, return_tensors="pt").to(device)


def logits(model):
    with torch.no_grad():
        return model(**batch).logits.float()


base_logits = logits(AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32).to(device))
summary, tensors = {"device": device}, {}
for name, train_dir in runs.items():
    try:
        adapter = Path(train_dir) / "adapter" if (Path(train_dir) / "adapter").is_dir() else Path(train_dir)
        manifest = json.loads((adapter / "manifest.json").read_text()) if (adapter / "manifest.json").exists() else {}
        tensors[name] = load_file(str(adapter / "adapter_model.safetensors"))
        b_norms = {k: t.float().norm().item() for k, t in tensors[name].items() if "lora_B" in k}
        model = load_adapter(AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32).to(device), adapter)
        summary[name] = {
            "steps": manifest.get("steps"),
            "resumed_from": manifest.get("resumed_from"),
            "loss_points": manifest.get("loss", {}).get("points"),
            "adapter_files": sorted(p.name for p in adapter.iterdir()),
            "lora_tensors": len(tensors[name]),
            "dtypes": sorted({str(t.dtype) for t in tensors[name].values()}),
            "lora_B_tensors": len(b_norms),
            "lora_B_zero": sorted(k for k, v in b_norms.items() if v == 0.0),
            "lora_B_min_norm": min(b_norms.values()) if b_norms else None,
            "max_abs_logit_change_vs_base": (logits(model) - base_logits).abs().max().item(),
        }
    except Exception as error:  # report and go on: the other adapters still tell something
        summary[name] = {"error": f"{type(error).__name__}: {error}"}
for left, right in (("fsdp", "plain"), ("fsdp", "fsdp_straight"), ("fsdp_straight", "plain")):
    if left not in tensors or right not in tensors:
        continue
    a_all, b_all = tensors[left], tensors[right]
    diffs, problems = {}, {}
    for k in sorted(set(a_all) | set(b_all)):
        if k not in a_all or k not in b_all:
            problems[k] = "missing in " + (left if k not in a_all else right)
        elif a_all[k].shape != b_all[k].shape:
            problems[k] = f"shape {tuple(a_all[k].shape)} vs {tuple(b_all[k].shape)}"
        else:
            a, b = a_all[k].float(), b_all[k].float()
            diffs[k] = {
                "max_abs_diff": (a - b).abs().max().item(),
                "max_abs": b.abs().max().item(),
                "rel_fro": ((a - b).norm() / b.norm().clamp_min(1e-12)).item(),
            }
    def worst(part):
        return max(((k, v) for k, v in diffs.items() if part in k), key=lambda kv: kv[1]["rel_fro"], default=None)
    summary[f"{left}_vs_{right}"] = {
        "same_keys": set(a_all) == set(b_all),
        "tensors_compared": len(diffs),
        "max_abs_diff": max((d["max_abs_diff"] for d in diffs.values()), default=None),
        "max_abs_weight": max((d["max_abs"] for d in diffs.values()), default=None),
        "max_rel_fro": max((d["rel_fro"] for d in diffs.values()), default=None),
        "worst_lora_A": worst("lora_A"),
        "worst_lora_B": worst("lora_B"),
        "worst_experts": worst("experts"),
        "problems": problems,
    }
Path(summary_path).write_text(json.dumps(summary, indent=2, default=str))
print(json.dumps(summary, indent=2, default=str))
EOF
BASE=$("$PY" -m cc_train train --cfg job --resolve model=tiny_qwen3_moe | awk '/^model:/{m=1} m && /^  path:/{print $2; exit}')
step verify 60 "$PY" "$WORK/verify.py" "$BASE" "$OUT/summary.json" \
    fsdp="$FSDP_DIR" fsdp_straight="$CC_TRAIN_RUNS/fsdpstraight/train/conscious/seed0" plain="$PLAIN_DIR" \
    fsdp_checkpoint1="$FSDP_DIR/checkpoints/checkpoint-1"

stamp "manifest of the resumed FSDP run (config left out)"
$PY -c "import json,sys; m=json.load(open(sys.argv[1])); m.pop('config',None); m.get('audit',{}).pop('adapted',None); print(json.dumps(m, indent=1, default=str)[:5000])" \
    "$FSDP_DIR/adapter/manifest.json" 2>&1
stamp "exit codes: data=${RC[data]} fsdp_stop=${RC[fsdp_stop]} (rank exit 3; accelerate launch reports 1) fsdp_resume=${RC[fsdp_resume]}" \
    "fsdp_straight=${RC[fsdp_straight]} plain=${RC[plain]} verify=${RC[verify]}"
find "$WORK/runs" -maxdepth 7 -not -path "*/.hydra*" | sort > "$OUT/tree.txt"
(cd "$WORK" && find logs runs \( -name "*.json" -o -name "*.log" -o -name "*.yaml" \) -not -path "*/checkpoints/*/*tokenizer*" \
    | tar -czf "$OUT/artifacts.tar.gz" -T -)
stamp "done"
