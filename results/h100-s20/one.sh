# Session 20, the one call: bits against the previous build and under the switches, then FP16
# at 650M and 3B against all four torch modes, then 8M against eager. Steps in priority order;
# a step is skipped (and says so) when too little of the 600 s call is left for it.
export CACHE_CARRY_MB=0
g=scripts/gpu_run.sh
left() { [ $((SECONDS + $1)) -le 585 ] || { echo "SKIPPED at $SECONDS s: $2"; return 1; }; }
BASE_ENV=ESMFUZZ_SCALAR_PREPASS=1 BASE_EXPECT_IDENTICAL=2 BASE_PRECISIONS="f16 bf16" \
  bash $g $OUT/1-base-8m base
BASE_SYNTH=esm2_t33_650M_UR50D BASE_ENV=ESMFUZZ_SCALAR_PREPASS=1 BASE_EXPECT_IDENTICAL=2 \
  BASE_PRECISIONS="f16 bf16" BASE_ATTENTION=fused bash $g $OUT/2-base-650m base
SAME_PRECISIONS="f16 bf16" bash $g $OUT/3-same same
echo "bits done at $SECONDS s"
left 200 650m && BENCH_MODELS=esm2_t33_650M_UR50D TORCH_MODES=eager,compiled,packed,packed-compiled \
  TORCH_PRECISIONS=f16 BENCH_PRECISIONS=f16 BENCH_ATTENTION=fused BENCH_REPEAT=3 STEP_SECONDS_TORCH=200 \
  TORCH_MODE_SECONDS=95 STEP_SECONDS_BENCH=40 bash $g $OUT/4-650m-f16 torchbench
echo "650M done at $SECONDS s"
left 240 3b && BENCH_MODELS=esm2_t36_3B_UR50D TORCH_MODES=eager,compiled,packed,packed-compiled \
  TORCH_PRECISIONS=f16 BENCH_PRECISIONS=f16 BENCH_ATTENTION=fused BENCH_REPEAT=3 \
  STEP_SECONDS_TORCH=$((585 - SECONDS - 75 > 240 ? 240 : 585 - SECONDS - 75)) TORCH_MODE_SECONDS=105 \
  STEP_SECONDS_BENCH=60 bash $g $OUT/5-3b-f16 torchbench
echo "3B done at $SECONDS s"
left 45 8m && BENCH_MODELS="8M@16384 8M@65536" TORCH_MODES=eager TORCH_PRECISIONS=f16 BENCH_PRECISIONS=f16 \
  BENCH_ATTENTION=fused BENCH_REPEAT=3 STEP_SECONDS_TORCH=20 STEP_SECONDS_BENCH=15 bash $g $OUT/6-8m torchbench
echo "one.sh done at $SECONDS s"
