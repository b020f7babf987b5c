# Session 22, call B: the composed attention's device inputs (layout gathers and masks, RoPE
# tables: 8 MB of f32 a 650M batch) uploaded only where a layer takes the composed path, so the
# flash path uploads none. Base build: e413d3b (the same without it). Steps in priority order;
# a step is skipped (and says so) when too little of the call is left for it.
# 1. Packed torch.compile at 650M, FP16 and BF16 (TORCH_PRECISIONS), against this build, same
#    batches.
# 2. Speed: base and this build alternating (basebench), 650M FP16 and 8M at 16,384 tokens.
# 3. Bits: base = this build with ESMFUZZ_POINTER_ROUND_TRIPS=1 = this build; 8M f16, bf16,
#    f32, fused and composed; then 650M random weights f16 and bf16, fused.
export CACHE_CARRY_MB=0
g=scripts/gpu_run.sh
left() { [ $((SECONDS + $1)) -le ${CEIL:-585} ] || { echo "SKIPPED at $SECONDS s: $2"; return 1; }; }
BENCH_MODELS=esm2_t33_650M_UR50D TORCH_MODES=packed-compiled \
  TORCH_PRECISIONS=${TORCH_PRECISIONS:-f16,bf16} BENCH_PRECISIONS=${TORCH_PRECISIONS:-f16,bf16} \
  BENCH_ATTENTION=fused BENCH_REPEAT=5 STEP_SECONDS_TORCH=${STEP_SECONDS_TORCH:-$((${CEIL:-585} - 180))} \
  TORCH_MODE_SECONDS=150 bash $g $OUT/1-torch torchbench
echo "torch done at $SECONDS s"
left 75 basebench && BENCH_MODELS="${BASEBENCH_MODELS:-esm2_t33_650M_UR50D 8M@16384}" STEP_SECONDS_BENCH=60 bash $g $OUT/2-basebench basebench
echo "basebench done at $SECONDS s"
left 50 bits && BASE_ENV=ESMFUZZ_POINTER_ROUND_TRIPS=1 BASE_EXPECT_IDENTICAL=2 bash $g $OUT/3-bits base
left 40 bits650 && BASE_SYNTH=esm2_t33_650M_UR50D BASE_ENV=ESMFUZZ_POINTER_ROUND_TRIPS=1 \
  BASE_EXPECT_IDENTICAL=2 BASE_PRECISIONS="f16 bf16" BASE_ATTENTION=fused bash $g $OUT/4-bits650 base
echo "s22b.sh done at $SECONDS s"
