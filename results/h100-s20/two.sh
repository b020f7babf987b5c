# Session 20, call two: packed torch.compile at 650M and 3B FP16 (timed out in call one, whose
# limits were too tight for a cold compile), esmfuzz beside it, then 8M against eager.
export CACHE_CARRY_MB=0
g=scripts/gpu_run.sh
BENCH_MODELS=esm2_t33_650M_UR50D TORCH_MODES=packed-compiled TORCH_PRECISIONS=f16 BENCH_PRECISIONS=f16 \
  BENCH_ATTENTION=fused BENCH_REPEAT=3 STEP_SECONDS_TORCH=170 TORCH_MODE_SECONDS=135 STEP_SECONDS_BENCH=30 \
  bash $g $OUT/1-650m-f16 torchbench
echo "650M done at $SECONDS s"
BENCH_MODELS=esm2_t36_3B_UR50D TORCH_MODES=packed-compiled TORCH_PRECISIONS=f16 BENCH_PRECISIONS=f16 \
  BENCH_ATTENTION=fused BENCH_REPEAT=3 STEP_SECONDS_TORCH=$((540 - SECONDS - 60)) TORCH_MODE_SECONDS=200 \
  STEP_SECONDS_BENCH=60 bash $g $OUT/2-3b-f16 torchbench
echo "3B done at $SECONDS s"
[ $SECONDS -le 540 ] && BENCH_MODELS="8M@16384 8M@65536" TORCH_MODES=eager TORCH_PRECISIONS=f16 BENCH_PRECISIONS=f16 \
  BENCH_ATTENTION=fused BENCH_REPEAT=3 STEP_SECONDS_TORCH=20 STEP_SECONDS_BENCH=10 bash $g $OUT/3-8m torchbench
echo "two.sh done at $SECONDS s"
