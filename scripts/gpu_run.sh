#!/usr/bin/env bash
# esmfuzz's CUDA checks, run on the GPU machine from the repository root:
#   bash scripts/gpu_run.sh [OUT_DIR] [STEP...]
# STEP: matmul parity bench fuzz fixtures (default: matmul parity bench fuzz). Needs gpu/ from
# scripts/prepare_gpu.sh. Everything printed goes to OUT_DIR/log.txt; JSON reports beside it.
# Each step has a time limit so one slow step cannot starve the rest (kernels compile and
# autotune on first use of every shape, which dominates short runs).
set -uo pipefail
out=${1:-gpu-out}
shift || true
steps=${*:-matmul parity bench fuzz}
mkdir -p "$out"
log="$out/log.txt"
bin=/tmp/esmfuzz
gunzip -c gpu/esmfuzz.gz > "$bin" && chmod +x "$bin"
# The binary's defaults read ../shared beside the repository.
[ -e ../shared ] || ln -s "$PWD/gpu/shared" ../shared
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >> "$log" 2>&1
status=0
run() {
  echo "== $*" | tee -a "$log"
  "$@" 2>&1 | tee -a "$log"
  local rc=${PIPESTATUS[0]}
  echo "== exit $rc" | tee -a "$log"
  [ "$rc" -eq 0 ] || status=1
}
for step in $steps; do
  case $step in
    matmul) run timeout 120 "$bin" matmul-check --backend cuda --size 1024 ;;
    parity) run timeout 300 "$bin" parity --backend cuda --precisions "${PARITY_PRECISIONS:-tf32,f16,bf16,f16-mixed}" --report "$out/parity_cuda.json" ;;
    bench) run timeout 200 "$bin" bench --backend cuda --precisions "${BENCH_PRECISIONS:-f32,tf32,f16,bf16}" --repeat 2 --report "$out/bench_cuda.json" ;;
    fuzz) run timeout 400 "$bin" fuzz --backend cuda --precision "${FUZZ_PRECISION:-f16}" --cases "${FUZZ_CASES:-4}" --out "$out/fuzz" ;;
    fixtures)
      run python3 scripts/make_tiny_fixtures.py /tmp/tiny
      tar -C /tmp -cf "$out/tiny_fixtures.tar" tiny ;;
    *) echo "unknown step $step" | tee -a "$log"; status=1 ;;
  esac
done
exit $status
