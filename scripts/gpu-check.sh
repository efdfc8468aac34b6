#!/usr/bin/env bash
# The CUDA backend against the CPU engine, on a machine with an NVIDIA GPU.
#
#   bash scripts/gpu-check.sh DIR [RESULTS]
#
# DIR holds `llm-quantize` and `cuda_gemv` (release builds: `cargo build --release -p
# llm-quantize` and `cargo build --release -p llmq-engine --features cuda --example
# cuda_gemv`), `models/<name>/` (Hugging Face folders, e.g. the shared test models) or
# `models/<name>.gguf` (smaller to carry: every format is requantized from it),
# `text.txt` (evaluation text) and, optionally, `real/*.gguf` (real models timed for
# decode speed). Results and logs go to RESULTS (default $OUT, else /tmp/gpu-check).
#
# For each model and each format of $FORMATS (default F16 Q8_0 Q4_K_M Q2_K IQ4_XS MXFP4 NVFP4;
# quantized here from the source):
#   - `eval` on the GPU with the CPU as --base: perplexity on both devices, their
#     relative difference and the mean KL divergence between the two;
#   - greedy `generate` of 32 tokens on both: identical text or where it diverges.
# For each Hugging Face folder, also each compressed-tensors checkpoint of $CT_FORMATS
# (default NVFP4 FP8 FP8_BLOCK MR-NVFP4 MR-MXFP4; MR-X is X through `--method mr-gptq`,
# whose Hadamard rotation the engine applies to activations at run time; "" skips them)
# made here with `quantize NAME compressed-tensors`, and every folder `ct/<name>/` (such
# checkpoints made elsewhere, smaller to carry), compared the same way.
# EXL3: each Hugging Face folder named in $EXL3_MODELS (default llama) quantized with
# `quantize NAME exl3 -q L` for each L of $EXL3_LEVELS (default 4.0; "" skips), and every
# folder `exl3/<name>/` (made elsewhere), compared the same way once per GPU decoder
# (LLMQ_EXL3_DECODE=alu, =lut); these rows must be within 0.1% in perplexity and 1e-4 mean
# KL of the CPU, else the script fails.
# Then `cuda_gemv`: every GPU weight type against the CPU dequantization, the copy
# bandwidth and the GEMV share of it (EXL3 rows per K and decoder); and decode tokens/s of
# each real/*.gguf.
set -uo pipefail
D="${1:?usage: gpu-check.sh DIR [RESULTS]}"
R="${2:-${OUT:-/tmp/gpu-check}}"
LQ="$D/llm-quantize"
mkdir -p "$R"
W="$(mktemp -d)"
trap 'rm -rf "$W"' EXIT
LOG="$R/gpu-check.log"
: >"$LOG"
export LLMQ_CUDA_CACHE="$W/kernel-cache"

nvidia-smi -L 2>&1 | tee -a "$LOG"
# NVRTC: the loader's path, else the toolkit's folder, else any copy on the disk
if ! ldconfig -p | grep -q 'libnvrtc.so' && [ -z "${LLMQ_NVRTC_LIB:-}" ]; then
  lib="$(ls /usr/local/cuda/lib64/libnvrtc.so.* /usr/local/cuda/targets/*/lib/libnvrtc.so.* 2>/dev/null \
    | grep -v builtins | head -1)"
  [ -n "$lib" ] || lib="$(find / -xdev -name 'libnvrtc.so.*' ! -name '*builtins*' 2>/dev/null | sort | head -1)"
  [ -n "$lib" ] && export LLMQ_NVRTC_LIB="$lib"
fi
echo "NVRTC: ${LLMQ_NVRTC_LIB:-from the loader path}" | tee -a "$LOG"

json() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))" "$@"; }

PROMPT="The history of the city begins"
SUMMARY="$R/summary.txt"
printf '%-14s %-12s %12s %12s %10s %10s %8s  %s\n' model format ppl_cpu ppl_gpu rel_diff mean_kl top1 greedy32 | tee "$SUMMARY"
# compare NAME FORMAT FILE: GPU against CPU for one model file or folder (one summary row)
compare() {
  local name="$1" q="$2" f="$3" e="$W/eval.json" ppl_gpu ppl_cpu kl top rel greedy
  if ! "$LQ" --format json eval "$f" --device cuda --base "$f" --base-device cpu \
      --dataset "$D/text.txt" --max-length 128 --samples 16 >"$e" 2>>"$LOG"; then
    echo "$name $q: eval failed (see log)" | tee -a "$SUMMARY"; cat "$e" >>"$LOG"; return 1
  fi
  ppl_gpu="$(json "$e" "d['perplexity']")"
  ppl_cpu="$(json "$e" "d['kl']['base_perplexity']")"
  kl="$(json "$e" "d['kl']['mean_kl_divergence']")"
  top="$(json "$e" "d['kl']['same_top_token_rate']")"
  rel="$(python3 -c "print(f'{abs($ppl_gpu-$ppl_cpu)/$ppl_cpu:.2e}')")"
  for dev in cpu cuda; do
    "$LQ" --format json generate "$f" --device "$dev" -p "$PROMPT" --max-tokens 32 \
      --temperature 0 --ignore-eos >"$W/gen-$dev.json" 2>>"$LOG"
  done
  greedy="$(python3 - "$W/gen-cpu.json" "$W/gen-cuda.json" <<'PY'
import json, sys
a, b = (json.load(open(p))["text"] for p in sys.argv[1:])
if a == b:
    print("identical")
else:
    n = next(i for i in range(min(len(a), len(b)) + 1) if i == min(len(a), len(b)) or a[i] != b[i])
    print(f"differs at char {n}/{len(a)}")
PY
)"
  printf '%-14s %-12s %12.5f %12.5f %10s %10.2e %7.2f%%  %s\n' "$name" "$q" "$ppl_cpu" "$ppl_gpu" "$rel" "$kl" \
    "$(python3 -c "print($top*100)")" "$greedy" | tee -a "$SUMMARY"
  # EXL3 rows are held to 0.1% perplexity and 1e-4 mean KL
  case "$q" in
    exl3*) python3 -c "import sys; sys.exit(0 if $rel <= 1e-3 and $kl <= 1e-4 else 1)" \
      || { echo "$name $q: outside 0.1% / 1e-4" | tee -a "$SUMMARY"; return 1; } ;;
  esac
}

# compare_exl3 NAME LEVEL FOLDER: once per GPU decoder
compare_exl3() {
  for dec in alu lut; do
    LLMQ_EXL3_DECODE="$dec" compare "$1" "exl3-$2-$dec" "$3" || return 1
  done
}

fail=0
for m in "$D"/models/*/ "$D"/models/*.gguf; do
  [ -e "$m" ] || continue
  # a folder, or a GGUF file NAME-TYPE.gguf (smaller to carry; the formats are requantized from it)
  name="$(basename "$m" .gguf)"
  for q in ${FORMATS:-F16 Q8_0 Q4_K_M Q2_K IQ4_XS MXFP4 NVFP4}; do
    f="$W/$name-$q.gguf"
    if ! "$LQ" quantize "$m" gguf -q "$q" -o "$W" -n "$name-$q.gguf" --verbosity quiet >>"$LOG" 2>&1; then
      echo "$name $q: quantize failed" | tee -a "$SUMMARY"; fail=1; continue
    fi
    compare "$name" "$q" "$f" || fail=1
  done
  # compressed-tensors FP checkpoints of a Hugging Face folder
  [ -d "$m" ] || continue
  for q in ${CT_FORMATS-NVFP4 FP8 FP8_BLOCK MR-NVFP4 MR-MXFP4}; do
    case "$q" in
      MR-*) args=(-q "${q#MR-}" --method mr-gptq --calibration-samples 32 --calibration-seq-len 256) ;;
      *) args=(-q "$q") ;;
    esac
    out="$W/ct-$name-$q"
    if ! "$LQ" quantize "$m" compressed-tensors "${args[@]}" -o "$out" --no-checkpoints --verbosity quiet \
        >>"$LOG" 2>&1; then
      echo "$name ct-$q: quantize failed" | tee -a "$SUMMARY"; fail=1; continue
    fi
    compare "$name" "ct-$q" "$(ls -d "$out"/* | head -1)" || fail=1
    rm -rf "$out"
  done
done
for c in "$D"/ct/*/; do
  [ -d "$c" ] || continue
  compare "$(basename "$c")" ct "${c%/}" || fail=1
done
for name in ${EXL3_MODELS-llama}; do
  m="$D/models/$name"
  [ -d "$m" ] || continue
  for lv in ${EXL3_LEVELS-4.0}; do
    out="$W/exl3-$name-$lv"
    if ! "$LQ" quantize "$m" exl3 -q "$lv" -o "$out" --no-checkpoints --verbosity quiet >>"$LOG" 2>&1; then
      echo "$name exl3-$lv: quantize failed" | tee -a "$SUMMARY"; fail=1; continue
    fi
    compare_exl3 "$name" "$lv" "$(ls -d "$out"/* | head -1)" || fail=1
    rm -rf "$out"
  done
done
for c in "$D"/exl3/*/; do
  [ -d "$c" ] || continue
  compare_exl3 "$(basename "$c")" carried "${c%/}" || fail=1
done

echo | tee -a "$SUMMARY"
"$D/cuda_gemv" 2>&1 | tee "$R/gemv.txt" | tee -a "$SUMMARY"
[ "${PIPESTATUS[0]}" = 0 ] || fail=1

for g in "$D"/real/*.gguf; do
  [ -f "$g" ] || continue
  for dev in cuda cpu; do
    "$LQ" --format json generate "$g" --device "$dev" -p "$PROMPT" --max-tokens 128 --temperature 0 \
      --ignore-eos >"$W/real.json" 2>>"$LOG"
    echo "decode $(basename "$g") on $dev: $(json "$W/real.json" "d['decode_tokens_per_second']") tokens/s, prompt $(json "$W/real.json" "d['prompt_tokens_per_second']") tokens/s" | tee -a "$SUMMARY"
  done
done
exit $fail
