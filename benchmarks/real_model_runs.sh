#!/usr/bin/env bash
# The real-model runs of results/real-0.5b/ and results/real-1.5b/: Qwen2.5-Coder-0.5B-Instruct and
# -1.5B-Instruct (GGUF, Q4_K_M) with the bundled engine on this CPU, every benchmark through the
# same CLI a user runs.
#
#   bash benchmarks/real_model_runs.sh [SHARED_DATA]      # default ../shared/data
#
# Runs one after another (alone on the machine: two cores), each into
# results/real-<size>/runs/<task>[-protocol]-<dtype>; the answer cache makes a rerun resume, and a
# run whose results.json exists is skipped. Then rewrites each results README's generated tables.
# Wall times, peak RSS, commit and machine are in each results.json.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data}
OUT=results/real-0.5b/runs
MODEL="model=qwen model.path=$(python -m qwen_eval.tools.fixtures real-0.5b)"

run() {  # run NAME DTYPE ARGS...
  local name=$1 dtype=$2; shift 2
  local dir="$OUT/$name-$dtype"
  if [ -f "$dir/results.json" ]; then echo "done already: $dir"; return; fi
  /usr/bin/time -f "$name-$dtype: %e s wall, %M KB peak RSS" \
    qwen-eval $MODEL model.dtype=$dtype progress=false output_dir="$dir" "$@"
}

# 0.5B, base and chat protocols, limit runs (2026-12-01)
run mmlu float32 task=mmlu data.path=$DATA/mmlu limit=5
run mmlu bfloat16 task=mmlu data.path=$DATA/mmlu limit=5
run gsm8k float32 task=gsm8k data.path=$DATA/gsm8k limit=32
run gsm8k bfloat16 task=gsm8k data.path=$DATA/gsm8k limit=32
run mmlu-qwen-chat float32 task=mmlu task.prompt=qwen_chat data.path=$DATA/mmlu limit=1
run gsm8k-qwen-chat float32 task=gsm8k task.prompt=qwen_chat data.path=$DATA/gsm8k limit=16
run ceval float32 task=ceval data.path=$DATA/ceval limit=2
run cmmlu float32 task=cmmlu data.path=$DATA/cmmlu limit=2
# 0.5B, bf16 with batch 64 for the generation tasks (2026-12-01)
run bbh bfloat16 task=bbh data.path=$DATA/bbh limit=2 batch_size=64 model.max_batch_tokens=65536
run ceval-qwen-chat bfloat16 task=ceval task.prompt=qwen_chat data.path=$DATA/ceval limit=1 batch_size=64
run humaneval-qwen-chat bfloat16 task=humaneval task.prompt=qwen_chat limit=16 batch_size=64
run mbpp bfloat16 task=mbpp data.path=$DATA/mbpp batch_size=64
run humaneval bfloat16 task=humaneval batch_size=64

# 0.5B, full runs: MMLU (fp32 and bf16) and GSM8K (bf16)
run mmlu-full float32 task=mmlu data.path=$DATA/mmlu
run mmlu-full bfloat16 task=mmlu data.path=$DATA/mmlu
run gsm8k-full bfloat16 task=gsm8k data.path=$DATA/gsm8k

# The Qwen2.5-Coder report's instruct code table (HumanEval; MBPP and MBPP+ from one run)
for dtype in float32 bfloat16; do
  run humaneval-instruct $dtype task=humaneval task.prompt=instruct
  run mbppplus $dtype task=mbppplus data.path=$DATA/mbppplus
done

OUT=results/real-1.5b/runs
MODEL="model=qwen model.path=$(python -m qwen_eval.tools.fixtures real-1.5b) model.max_batch_tokens=32768"
for dtype in float32 bfloat16; do
  run humaneval-instruct $dtype task=humaneval task.prompt=instruct
  run mbppplus $dtype task=mbppplus data.path=$DATA/mbppplus
done

qwen-eval-table --update-readme results/real-0.5b/README.md --update-readme results/real-1.5b/README.md
