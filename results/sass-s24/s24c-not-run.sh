# Session 24, call C, NOT RUN: the acceptance's eager rows on one card: 8M FP16 at 16,384- and
# 65,536-token batches against eager torch (the shared weights), 650M true FP32 packed against
# eager torch FP32 (TF32 off), 650M FP16 against packed eager torch; then the CUDA suite with
# what is left (gpu/suite.xz). Steps in priority order; skipped (and said) when too little is left.
export CACHE_CARRY_MB=0
g=scripts/gpu_run.sh
left() { [ $((SECONDS + $1)) -le ${CEIL:-560} ] || { echo "SKIPPED at $SECONDS s: $2"; return 1; }; }
BENCH_MODELS="8M@16384 8M@65536" TORCH_MODES=eager TORCH_PRECISIONS=f16 BENCH_PRECISIONS=f16 \
  BENCH_ATTENTION=fused BENCH_REPEAT=5 STEP_SECONDS_TORCH=60 TORCH_MODE_SECONDS=50 \
  STEP_SECONDS_BENCH=50 bash $g $OUT/1-8m-eager torchbench
echo "8M done at $SECONDS s"
left 150 fp32 && BENCH_MODELS=esm2_t33_650M_UR50D TORCH_MODES=eager,packed TORCH_PRECISIONS=f32,f16 \
  BENCH_PRECISIONS=f32,f16 BENCH_ATTENTION=fused BENCH_REPEAT=3 STEP_SECONDS_TORCH=90 \
  TORCH_MODE_SECONDS=40 STEP_SECONDS_BENCH=60 bash $g $OUT/2-650m-eager torchbench
echo "650M eager done at $SECONDS s"
left 120 suite && STEP_SECONDS_SUITE=$((${CEIL:-560} - SECONDS - 20)) SUITE_ARGS="--test-threads 8" \
  bash $g $OUT/3-suite suite
echo "s24c.sh done at $SECONDS s"
