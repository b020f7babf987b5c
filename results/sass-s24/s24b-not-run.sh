# Session 24, call B, NOT RUN: the H200 acceptance rows at 3B, once call A has decided the
# kernels. 3B against packed torch.compile, FP16 and BF16, same batches, one call (esmfuzz BF16
# at 3B was never timed: bench gets 170 s for both precisions); then compiled padded torch BF16
# with what is left. Needs only gpu/esmfuzz.xz, gpu/shared, gpu/cubecl-autotune.tar.gz,
# gpu/calls. Run as: CEIL=<seconds> bash gpu/calls/s24b.sh.
export CACHE_CARRY_MB=0
g=scripts/gpu_run.sh
left() { [ $((SECONDS + $1)) -le ${CEIL:-560} ] || { echo "SKIPPED at $SECONDS s: $2"; return 1; }; }
BENCH_MODELS=esm2_t36_3B_UR50D TORCH_MODES=packed-compiled TORCH_PRECISIONS=f16,bf16 \
  BENCH_PRECISIONS=f16,bf16 BENCH_ATTENTION=fused BENCH_REPEAT=5 STEP_SECONDS_TORCH=${STEP1:-300} \
  TORCH_MODE_SECONDS=140 STEP_SECONDS_BENCH=170 bash $g $OUT/1-3b-packed torchbench
echo "3B packed done at $SECONDS s"
left 150 compiled && BENCH_MODELS=esm2_t36_3B_UR50D TORCH_MODES=compiled TORCH_PRECISIONS=bf16 \
  BENCH_PRECISIONS=bf16 BENCH_ATTENTION=fused BENCH_REPEAT=5 \
  STEP_SECONDS_TORCH=$((${CEIL:-560} - SECONDS - 60)) TORCH_MODE_SECONDS=150 STEP_SECONDS_BENCH=55 \
  bash $g $OUT/2-3b-compiled torchbench
echo "s24b.sh done at $SECONDS s"
