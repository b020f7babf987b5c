# Session 22, call A: custom operations' device pointers fetched in one round trip to cubecl's
# device thread (the default now) against one round trip a pointer (ESMFUZZ_POINTER_ROUND_TRIPS=1,
# the old path). Steps in priority order; a step is skipped (and says so) when too little of
# the 600 s call is left for it.
# 1. Speed: both ways at 650M FP16 (default budget) and 8M at 16,384 tokens; bench prints when
#    the host had enqueued each batch of the forwards-alone passes.
# 2. Bits: both ways, 8M, f16 and bf16, padded and packed, must be identical.
# 3. torch.compile (padded and packed) against esmfuzz at 650M FP16, same batches, same call.
export CACHE_CARRY_MB=0
g=scripts/gpu_run.sh
left() { [ $((SECONDS + $1)) -le ${CEIL:-585} ] || { echo "SKIPPED at $SECONDS s: $2"; return 1; }; }
SAME_ENVS="ESMFUZZ_POINTER_ROUND_TRIPS=1" BENCH_MODELS="esm2_t33_650M_UR50D 8M@16384" \
  BENCH_REPEAT=5 STEP_SECONDS_BENCH=100 bash $g $OUT/1-speed switches
echo "speed done at $SECONDS s"
left 60 bits && SAME_ENVS="ESMFUZZ_POINTER_ROUND_TRIPS=1" SAME_PRECISIONS="f16 bf16" \
  bash $g $OUT/2-bits same
echo "bits done at $SECONDS s"
left 300 torch && BENCH_MODELS=esm2_t33_650M_UR50D TORCH_MODES=packed-compiled,compiled \
  TORCH_PRECISIONS=f16 BENCH_PRECISIONS=f16 BENCH_ATTENTION=fused BENCH_REPEAT=5 \
  STEP_SECONDS_TORCH=$((${CEIL:-585} - SECONDS - 50)) TORCH_MODE_SECONDS=200 bash $g $OUT/3-torch torchbench
echo "s22a.sh done at $SECONDS s"
