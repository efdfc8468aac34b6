#!/usr/bin/env bash
# Calibration on the GPU (issue 17) against the CPU, on a machine with an NVIDIA GPU.
#
#   bash scripts/gpu-calib-check.sh --bin LLM_QUANTIZE --text TEXT [--out DIR] [--samples 64] MODEL...
#   bash scripts/gpu-calib-check.sh --bin LLM_QUANTIZE --text TEXT [--out DIR] --big \
#        [--layers 32] [--limit 560] --tokenizer MODEL
#   add --awq to either for AWQ instead of GPTQ; --imatrix (small part) for gguf's importance matrix
#
# Small part (each MODEL a Hugging Face folder, e.g. the shared llama, qwen3, qwen3-moe):
#   GPTQ 4-bit g128 (`quantize MODEL gptq -q 4bit --method gptq`, --samples windows of 512
#   tokens of the bundled calibration set) with --device cpu and
#   --device cuda, the device run with LLMQ_CALIB_CHECK=1 (every device solve compared
#   with the CPU solve on the same Hessian: lines "check ..." in the log); then `eval OUT
#   --base MODEL --dataset TEXT --samples 16 --max-length 256 --device cpu` for both, and
#   the share of equal 4-bit codes between the two outputs. One line per model:
#   wall times, both KLs, the code agreement, PASS / FAIL.
# Big part (--big): a Llama-3.1-8B-shaped model with random bf16 weights (hidden 4096,
#   32 layers, FFN 14336, 32/8 heads of 128, vocabulary 128256; scripts/random-model.py,
#   tokenizer files from --tokenizer) made once under WORK, then GPTQ 4-bit g128 on the GPU
#   with 128 x 2048 calibration tokens (TEXT repeated to be long enough): wall time, host
#   peak RSS (/usr/bin/time -v), GPU peak memory (nvidia-smi polled every 200 ms) and the
#   per-layer times. Goal: <= 600 s and <= 32 GB RSS. --limit caps the quantize run (s);
#   --layers makes a shallower model (per-layer times scale to 32); --make-only stops
#   after making the model (a first call within the device tool's 10-minute limit).
# --exact: the device's block products on the exact GEMV kernels (LLMQ_CALIB_EXACT=1)
#   instead of tensor cores with f16 weights (the default of --device cuda).
# --awq: both parts run AWQ instead of GPTQ (`quantize MODEL awq -q 4bit --method awq`,
#   4-bit g128): the small part compares --device cpu with --device cuda by the eval KL
#   (PASS: within 10% or 2e-4 of each other) and reports the code agreement and the
#   share of tensors with the same AWQ exponent (informative: a different exponent at a
#   near-tie changes a whole tensor's codes); the device run has LLMQ_CALIB_CHECK=1,
#   which runs the CPU's searches on the device's statistics (lines "check awq ...":
#   exponents, losses and clip ranges of both, summarised per model). The big part
#   runs AWQ on the 8B shape with the same report and goal.
# --imatrix: the small part only, for gguf's importance matrix (`quantize MODEL gguf -q
#   Q4_K_M --calibration-data TEXT`, --samples windows) with --device cpu and --device
#   cuda: the largest relative difference between the two .imatrix.gguf files' sums, the
#   eval KL of both GGUFs (PASS: KL within 10% or 2e-4, sums within 5%; with --exact
#   the sums should agree to float rounding).
#
# STEP_LIMIT (env, default 240 s) caps each quantize and eval of the small part.
# KEEP_OUT=1 (env) keeps the big model's GPTQ (or --awq: AWQ) output in WORK.
# WORK (env, default /tmp/gpu-calib-work) holds the big model and the outputs; results
# and logs go to --out (default $OUT, else /tmp/gpu-calib-check). Exit 0 only if every
# part run passed.
set -uo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
LQ="" TEXT="" R="${OUT:-/tmp/gpu-calib-check}" BIG=0 LAYERS=32 LIMIT=560 TOK="" SAMPLES=64 MAKE_ONLY=0
METHOD=gptq
MODELS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) LQ="$2"; shift 2 ;;
    --text) TEXT="$2"; shift 2 ;;
    --out) R="$2"; shift 2 ;;
    --big) BIG=1; shift ;;
    --layers) LAYERS="$2"; shift 2 ;;
    --limit) LIMIT="$2"; shift 2 ;;
    --tokenizer) TOK="$2"; shift 2 ;;
    --samples) SAMPLES="$2"; shift 2 ;;
    --exact) export LLMQ_CALIB_EXACT=1; shift ;;
    --make-only) MAKE_ONLY=1; shift ;;
    --awq) METHOD=awq; shift ;;
    --imatrix) METHOD=imatrix; shift ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) MODELS+=("$1"); shift ;;
  esac
done
[ -x "$LQ" ] || { echo "FAIL: --bin $LQ is not an executable" >&2; exit 2; }
[ -f "$TEXT" ] || { echo "FAIL: --text $TEXT is not a file" >&2; exit 2; }
W="${WORK:-/tmp/gpu-calib-work}"
mkdir -p "$R" "$W"
LOG="$R/gpu-calib-check.log"
SUMMARY="$R/summary.txt"
: >"$LOG"
: >"$SUMMARY"
export LLMQ_CUDA_CACHE="$W/kernel-cache"
say() { echo "$*" | tee -a "$SUMMARY"; }

nvidia-smi -L 2>&1 | tee -a "$LOG"
# NVRTC and cuBLAS: the loader's path, else the toolkit's folder
if ! ldconfig -p | grep -q 'libnvrtc.so' && [ -z "${LLMQ_NVRTC_LIB:-}" ]; then
  lib="$(ls /usr/local/cuda/lib64/libnvrtc.so.* /usr/local/cuda/targets/*/lib/libnvrtc.so.* 2>/dev/null \
    | grep -v builtins | head -1)"
  [ -n "$lib" ] || lib="$(find / -xdev -name 'libnvrtc.so.*' ! -name '*builtins*' 2>/dev/null | sort | head -1)"
  [ -n "$lib" ] && export LLMQ_NVRTC_LIB="$lib"
fi
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
  [ -d "$d" ] && export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
echo "NVRTC: ${LLMQ_NVRTC_LIB:-from the loader path}; LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}" | tee -a "$LOG"

json() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))" "$@"; }
now() { date +%s.%N; }
fail=0

# share of equal codes between two GPTQ folders (model.safetensors, packed int32 qweight)
codes_equal() {
  python3 - "$1" "$2" <<'PY'
import json, struct, sys, glob, os
import numpy as np
def tensors(d):
    out = {}
    for p in sorted(glob.glob(os.path.join(d, "*.safetensors"))):
        b = open(p, "rb").read()
        n = struct.unpack("<Q", b[:8])[0]
        h = json.loads(b[8:8 + n])
        for k, v in h.items():
            if k.endswith(".qweight"):
                s, e = v["data_offsets"]
                out[k] = np.frombuffer(b[8 + n + s:8 + n + e], dtype=np.int32)
    return out
a, b = tensors(sys.argv[1]), tensors(sys.argv[2])
same = total = 0
for k in a:
    if k not in b or a[k].shape != b[k].shape:
        print("nan"); sys.exit()
    x, y = a[k].view(np.uint32), b[k].view(np.uint32)
    for s in range(0, 32, 4):
        same += int(np.count_nonzero(((x >> s) & 15) == ((y >> s) & 15)))
        total += x.size
print(f"{same / max(total, 1):.5f}" if a else "nan")
PY
}

# the importance matrix of one model on the CPU and on the GPU (--imatrix)
imatrix_model() {
  local m="$1" name dev out e
  name="$(basename "$m")"
  declare -A wall=() kl=()
  for dev in cpu cuda; do
    out="$W/$name-imatrix-$dev"
    rm -rf "$out"; mkdir -p "$out"
    t0="$(now)"
    if ! timeout "${STEP_LIMIT:-240}" "$LQ" --format json quantize "$m" gguf -q Q4_K_M --device "$dev" \
        --calibration-data "$TEXT" --calibration-samples "$SAMPLES" -o "$out" -n model.gguf \
        >"$R/$name-imatrix-$dev.json" 2>"$R/$name-imatrix-$dev.log"; then
      say "$name: imatrix quantize --device $dev FAILED (see $R/$name-imatrix-$dev.log):"
      tail -3 "$R/$name-imatrix-$dev.log" | tee -a "$SUMMARY"; return 1
    fi
    wall[$dev]="$(python3 -c "print(f'{$(now) - $t0:.1f}')")"
    e="$R/$name-imatrix-eval-$dev.json"
    if ! timeout "${STEP_LIMIT:-240}" "$LQ" --format json eval "$out/model.gguf" --base "$m" --dataset "$TEXT" \
        --samples 16 --max-length 256 --device cpu >"$e" 2>>"$LOG"; then
      say "$name: eval of the $dev GGUF FAILED (see $LOG)"; return 1
    fi
    kl[$dev]="$(json "$e" "d['kl']['mean_kl_divergence']")"
  done
  python3 - "$W/$name-imatrix-cpu/model.imatrix.gguf" "$W/$name-imatrix-cuda/model.imatrix.gguf" \
      "$name" "${wall[cpu]}" "${wall[cuda]}" "${kl[cpu]}" "${kl[cuda]}" <<'PY' | tee -a "$SUMMARY"
import struct, sys
import numpy as np
def gguf_tensors(path):
    b = open(path, "rb").read()
    assert b[:4] == b"GGUF", path
    p = 4
    def u(fmt):
        nonlocal p
        v = struct.unpack_from("<" + fmt, b, p); p += struct.calcsize("<" + fmt); return v[0]
    def s():
        nonlocal p
        n = u("Q"); v = b[p:p + n].decode(); p += n; return v
    sizes = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
    def val(t):
        if t == 8: return s()
        if t == 9:
            et = u("I"); n = u("Q"); return [val(et) for _ in range(n)]
        return u(sizes[t])
    _version, nt, nkv = u("I"), u("Q"), u("Q")
    align = 32
    for _ in range(nkv):
        k = s(); v = val(u("I"))
        if k == "general.alignment": align = v
    infos = []
    for _ in range(nt):
        name = s(); nd = u("I"); dims = [u("Q") for _ in range(nd)]; typ = u("I"); off = u("Q")
        infos.append((name, dims, typ, off))
    base = (p + align - 1) // align * align
    out = {}
    for name, dims, typ, off in infos:
        n = int(np.prod(dims)); assert typ == 0, (name, typ)
        out[name] = np.frombuffer(b, dtype=np.float32, count=n, offset=base + off).astype(np.float64)
    return out
a, g = gguf_tensors(sys.argv[1]), gguf_tensors(sys.argv[2])
name, wc, wg, kc, kg = sys.argv[3], sys.argv[4], sys.argv[5], float(sys.argv[6]), float(sys.argv[7])
same_keys = sorted(a) == sorted(g)
worst, worst_name, counts_eq = 0.0, "", True
for k in a:
    if k not in g or a[k].shape != g[k].shape:
        same_keys = False; continue
    if k.endswith(".counts"):
        counts_eq &= bool(np.array_equal(a[k], g[k])); continue
    d = float(np.max(np.abs(a[k] - g[k]) / np.maximum(np.abs(a[k]), 1e-30)))
    if d > worst: worst, worst_name = d, k
rel = abs(kg - kc) / max(kc, 1e-12)
ok = same_keys and counts_eq and worst <= 0.05 and (rel <= 0.10 or abs(kg - kc) <= 2e-4)
print(f"{name:12s} imatrix cpu {wc} s, cuda {wg} s; {len(a)} tensors, same names {same_keys}, counts equal {counts_eq}, "
      f"sums max rel. diff {worst:.2e} ({worst_name}); KL cpu {kc:.4e} cuda {kg:.4e} (rel {rel:.3f})  {'PASS' if ok else 'FAIL'}")
sys.exit(0 if ok else 1)
PY
}

if [ "$METHOD" = imatrix ]; then
  for m in "${MODELS[@]}"; do imatrix_model "$m" || fail=1; done
  exit $fail
fi
if [ ${#MODELS[@]} -gt 0 ]; then
  printf '%-12s %9s %9s %12s %12s %9s %9s  %s\n' model cpu_s gpu_s kl_cpu kl_gpu kl_rel codes_eq result | tee -a "$SUMMARY"
fi
for m in "${MODELS[@]}"; do
  name="$(basename "$m")"
  ok=1
  declare -A wall=() kl=()
  for dev in cpu cuda; do
    out="$W/$name-$METHOD-$dev"
    rm -rf "$out"
    t0="$(now)"
    if ! LLMQ_CALIB_CHECK=$([ "$dev" = cuda ] && echo 1 || echo 0) timeout "${STEP_LIMIT:-240}" "$LQ" --format json quantize "$m" "$METHOD" -q 4bit \
        --method "$METHOD" --device "$dev" --no-checkpoints --calibration-samples "$SAMPLES" \
        -o "$W" -n "$name-$METHOD-$dev" \
        >"$R/$name-quantize-$dev.json" 2>"$R/$name-quantize-$dev.log"; then
      say "$name: quantize --device $dev FAILED (see $R/$name-quantize-$dev.log and .json):"
      tail -3 "$R/$name-quantize-$dev.log" | tee -a "$SUMMARY"
      cat "$R/$name-quantize-$dev.json" | tee -a "$SUMMARY"; ok=0; break
    fi
    wall[$dev]="$(python3 -c "print(f'{$(now) - $t0:.1f}')")"
    e="$R/$name-eval-$dev.json"
    if ! timeout "${STEP_LIMIT:-240}" "$LQ" --format json eval "$out" --base "$m" --dataset "$TEXT" --samples 16 \
        --max-length 256 --device cpu >"$e" 2>>"$LOG"; then
      say "$name: eval of the $dev output FAILED (see $LOG)"; cat "$e" >>"$LOG"; ok=0; break
    fi
    kl[$dev]="$(json "$e" "d['kl']['mean_kl_divergence']")"
  done
  if [ $ok = 0 ]; then fail=1; continue; fi
  eq="$(codes_equal "$W/$name-$METHOD-cpu" "$W/$name-$METHOD-cuda")"
  verdict="$(python3 - "${kl[cpu]}" "${kl[cuda]}" "$eq" "$METHOD" <<'PY'
import sys
c, g, eq = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
rel = abs(g - c) / max(c, 1e-12)
eqf = float(eq) if eq != "nan" else 0.0
# within noise: the KLs within 10% of each other (or 2e-4 absolute); GPTQ: most codes
# equal (AWQ: a different exponent at a near-tie changes a whole tensor, not required)
ok = (rel <= 0.10 or abs(g - c) <= 2e-4) and (eqf >= 0.97 or sys.argv[4] == "awq")
print(f"{rel:9.3f} {'PASS' if ok else 'FAIL'}")
PY
)"
  relv="${verdict% *}"; res="${verdict##* }"
  printf '%-12s %9s %9s %12.4e %12.4e %9s %9s  %s\n' "$name" "${wall[cpu]}" "${wall[cuda]}" "${kl[cpu]}" "${kl[cuda]}" \
    "$relv" "$eq" "$res" | tee -a "$SUMMARY"
  [ "$res" = PASS ] || fail=1
  if [ "$METHOD" = awq ]; then
    # AWQ exponents of both runs, and the device searches against the CPU's on the same rows
    python3 - "$R/$name-quantize-cpu.json" "$R/$name-quantize-cuda.json" "$R/$name-quantize-cuda.log" "$name" <<'PY' | tee -a "$SUMMARY"
import json, re, sys
def ratios(p):
    d = json.load(open(p))
    return {t["name"]: t.get("awq_ratio") for t in d.get("metadata", {}).get("tensors_report", [])}
a, b = ratios(sys.argv[1]), ratios(sys.argv[2])
same = sum(1 for k in a if k in b and a[k] == b[k])
print(f"  {sys.argv[4]}: AWQ exponent equal in {same} of {len(a)} tensors (cpu vs cuda runs)")
t = open(sys.argv[3]).read()
sc = [(float(m.group(1)), float(m.group(2)), float(m.group(3)), float(m.group(4)))
      for m in re.finditer(r"check awq scale \S+: ratio ([0-9.]+) \(CPU search on the same rows ([0-9.]+)\), loss ([0-9.e+-]+) \(CPU ([0-9.e+-]+)\)", t)]
cl = [float(m.group(1)) for m in re.finditer(r"check awq clip \S+ \[\d+, \d+\]: ranges equal to the CPU search on the same rows ([0-9.]+)", t)]
if sc:
    eqr = sum(1 for x in sc if x[0] == x[1])
    worst = max(abs(x[2] - x[3]) / max(x[3], 1e-300) for x in sc)
    print(f"  {sys.argv[4]}: device scale search vs CPU search on the same rows: exponent equal at {eqr} of {len(sc)} sites, chosen loss max rel. diff {worst:.2e}")
else:
    print(f"  {sys.argv[4]}: no 'check awq scale' lines")
if cl:
    print(f"  {sys.argv[4]}: device clip search vs CPU on the same rows: {len(cl)} tensors, ranges equal min {min(cl):.5f}, mean {sum(cl)/len(cl):.5f}")
PY
    continue
  fi
  # the device solves against the CPU solve on the same Hessians
  python3 - "$R/$name-quantize-cuda.log" "$name" <<'PY' | tee -a "$SUMMARY"
import re, sys
t = open(sys.argv[1]).read()
xs = [float(m.group(1)) for m in re.finditer(r"check \S+: codes equal to the CPU solve on the same Hessian ([0-9.]+)", t)]
hs = [float(m.group(1)) for m in re.finditer(r"device Hessian vs host rel\. diff ([0-9.e+-]+)", t)]
print(f"  {sys.argv[2]}: device solve vs CPU solve on the same Hessian: {len(xs)} tensors, "
      + (f"code agreement min {min(xs):.5f}, mean {sum(xs)/len(xs):.5f}" if xs else "no check lines")
      + (f"; device Hessians vs host (same rows): max rel. diff {max(hs):.2e}" if hs else ""))
PY
done

if [ $BIG = 1 ]; then
  [ -d "$TOK" ] || { say "FAIL: --big needs --tokenizer MODEL_DIR"; exit 2; }
  big="$W/llama8b-$LAYERS"
  if [ ! -f "$big/config.json" ]; then
    t0="$(now)"
    # BIG_SHAPE: other dimensions (a small shape to try the script on a host)
    # shellcheck disable=SC2086
    if ! timeout 900 python3 "$HERE/random-model.py" "$big.tmp" --tokenizer "$TOK" --layers "$LAYERS" \
        ${BIG_SHAPE:---hidden 4096 --ffn 14336 --heads 32 --kv-heads 8 --head-dim 128 --vocab 128256} >>"$LOG" 2>&1; then
      say "big: random-model.py FAILED (see $LOG)"; rm -rf "$big.tmp"; exit 1
    fi
    mv "$big.tmp" "$big"
    say "big: made $big in $(python3 -c "print(f'{$(now) - $t0:.0f}')") s ($(du -sh "$big" | cut -f1))"
  fi
  if [ "$MAKE_ONLY" = 1 ]; then exit 0; fi
  # calibration text of at least 4 MB (128 x 2048 tokens)
  cal="$W/calib.txt"
  : >"$cal"
  while [ "$(stat -c %s "$cal")" -lt 4000000 ]; do cat "$TEXT" >>"$cal"; echo >>"$cal"; done
  out="$W/llama8b-$LAYERS-$METHOD"
  rm -rf "$out"
  mem="$W/gpu-mem.csv"
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 >"$mem" 2>/dev/null &
  smi=$!
  base="$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits 2>/dev/null | head -1)"
  t0="$(now)"
  # peak RSS: /usr/bin/time -v, else the same number from Python's getrusage
  timev() {
    if [ -x /usr/bin/time ]; then /usr/bin/time -v -o "$R/big-time.txt" "$@"; return; fi
    python3 - "$R/big-time.txt" "$@" <<'PY'
import resource, subprocess, sys
rc = subprocess.call(sys.argv[2:])
open(sys.argv[1], "w").write(f"Maximum resident set size (kbytes): {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}\n")
sys.exit(rc)
PY
  }
  timev timeout "$LIMIT" "$LQ" --format json quantize "$big" "$METHOD" -q 4bit \
    --method "$METHOD" --device cuda --no-checkpoints --no-validate --calibration-data "$cal" \
    --calibration-samples 128 --calibration-seq-len 2048 -o "$W" -n "llama8b-$LAYERS-$METHOD" \
    >"$R/big-quantize.json" 2>"$R/big-quantize.log"
  rc=$?
  wall="$(python3 -c "print(f'{$(now) - $t0:.1f}')")"
  kill "$smi" 2>/dev/null; wait "$smi" 2>/dev/null
  rss_kb="$(grep 'Maximum resident set size' "$R/big-time.txt" | awk '{print $NF}')"
  peak="$(sort -n "$mem" | tail -1)"
  grep -E "layer [0-9]+:|memory|Calibration|calibration on|note" "$R/big-quantize.log" | tee -a "$SUMMARY"
  say "big ($METHOD, $LAYERS layers): exit $rc, wall ${wall} s, host peak RSS $(python3 -c "print(f'{${rss_kb:-0}/1e6:.2f}')") GB, GPU memory peak ${peak:-?} MiB (before: ${base:-?} MiB)"
  python3 - "$R/big-quantize.log" "$LAYERS" <<'PY' | tee -a "$SUMMARY"
import re, sys
t = [sum(map(float, m.groups())) for m in re.finditer(r"layer \d+: load, forward and (?:Hessians|statistics) ([0-9.]+) s, (?:GPTQ|AWQ) ([0-9.]+) s, forward ([0-9.]+) s", open(sys.argv[1]).read())]
if t:
    per = sum(t) / len(t)
    print(f"big: {len(t)} of {sys.argv[2]} layers done, {per:.1f} s per layer: 32 layers take about {32 * per:.0f} s plus loading")
PY
  if [ $rc = 0 ] && python3 -c "import sys; sys.exit(0 if $wall <= 600 and ${rss_kb:-99999999} <= 32e6 else 1)"; then
    say "big: PASS (<= 600 s, <= 32 GB)"
  else
    say "big: FAIL (exit $rc; goal <= 600 s and <= 32 GB; see $R/big-quantize.log)"; tail -5 "$R/big-quantize.log" | tee -a "$SUMMARY"
    fail=1
  fi
  # KEEP_OUT=1 keeps the quantized model (e.g. for a decode benchmark afterwards)
  [ "${KEEP_OUT:-0}" = 1 ] || rm -rf "$out"
  rm -rf "$W/.llama8b-$LAYERS-$METHOD.partial"
fi
exit $fail
