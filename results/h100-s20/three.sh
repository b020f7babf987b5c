# Session 20, call three: torch.compile (padded) at 3B FP16, then 650M BF16 against both compiled modes.
export CACHE_CARRY_MB=0
g=scripts/gpu_run.sh
BENCH_MODELS=esm2_t36_3B_UR50D TORCH_MODES=compiled TORCH_PRECISIONS=f16 BENCH_PRECISIONS=f16 \
  BENCH_ATTENTION=fused BENCH_REPEAT=3 STEP_SECONDS_TORCH=170 TORCH_MODE_SECONDS=150 STEP_SECONDS_BENCH=55 \
  bash $g $OUT/1-3b-f16 torchbench
echo "3B done at $SECONDS s"
BENCH_MODELS=esm2_t33_650M_UR50D TORCH_MODES=compiled,packed-compiled TORCH_PRECISIONS=bf16 BENCH_PRECISIONS=bf16 \
  BENCH_ATTENTION=fused BENCH_REPEAT=3 STEP_SECONDS_TORCH=$((440 - SECONDS - 20)) TORCH_MODE_SECONDS=120 \
  STEP_SECONDS_BENCH=20 bash $g $OUT/2-650m-bf16 torchbench
echo "three.sh done at $SECONDS s"
