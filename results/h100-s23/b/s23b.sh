# Session 23, call B: 3B against packed torch.compile, FP16 and BF16, same batches, one call;
# then padded torch.compile FP16 with what is left. Build 130b655.
export CACHE_CARRY_MB=0
g=scripts/gpu_run.sh
left() { [ $((SECONDS + $1)) -le ${CEIL:-560} ] || { echo "SKIPPED at $SECONDS s: $2"; return 1; }; }
BENCH_MODELS=esm2_t36_3B_UR50D TORCH_MODES=packed-compiled TORCH_PRECISIONS=f16,bf16 \
  BENCH_PRECISIONS=f16,bf16 BENCH_ATTENTION=fused BENCH_REPEAT=5 STEP_SECONDS_TORCH=${STEP1:-330} \
  TORCH_MODE_SECONDS=150 STEP_SECONDS_BENCH=90 bash $g $OUT/1-3b-packed torchbench
echo "3B packed done at $SECONDS s"
left 150 compiled && BENCH_MODELS=esm2_t36_3B_UR50D TORCH_MODES=compiled TORCH_PRECISIONS=f16 \
  BENCH_PRECISIONS=f16 BENCH_ATTENTION=fused BENCH_REPEAT=5 \
  STEP_SECONDS_TORCH=$((${CEIL:-560} - SECONDS - 50)) TORCH_MODE_SECONDS=150 STEP_SECONDS_BENCH=45 \
  bash $g $OUT/2-3b-compiled torchbench
echo "s23b.sh done at $SECONDS s"
