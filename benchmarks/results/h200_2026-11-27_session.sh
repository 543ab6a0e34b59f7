#!/usr/bin/env bash
# This session's device run: the accelerator check (cuBLAS GEMMs: XLA's Triton GEMM autotuning
# compiles too slowly for a full sweep in the lease), then default XLA flags A/B on B/16 and S/32.
# A record: the PYTHONPATH line reuses the wheel folder that the check of that day left in /tmp; since
# 2026-12-07 the check removes it on exit. Today's way to run the GPU check: benchmarks/gpu_session.sh.
export PYTHONUNBUFFERED=1 JAX_COMPILATION_CACHE_DIR=/tmp/jc
T0=$SECONDS
XLA_FLAGS=${SWEEP_FLAGS---xla_gpu_enable_triton_gemm=false} bash benchmarks/accelerator_check.sh $OUT/c --wheels .whl --budget ${BUDGET:-400}
export PYTHONPATH=$(ls -d /tmp/mixer_jax_site.* | head -1):$PWD
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=0
export JAX_PERSISTENT_CACHE_ENABLE_XLA_CACHES=xla_gpu_per_fusion_autotune_cache_dir XLA_PYTHON_CLIENT_MEM_FRACTION=0.9
left=$((${LIMIT:-585} - (SECONDS - T0)))
echo "== AB default XLA flags (t=$((SECONDS - T0)) s, ${left} s left)"
[ $left -gt 30 ] && XLA_FLAGS= timeout $left python3 benchmarks/throughput.py --variant=B/16,S/32 --mode=both \
  --batch_size=512 --dtype=bfloat16 --impl=reference,token_major --json_out=$OUT/ab.jsonl 2>&1 | grep -E "img/s|skipped|failed|rror|compiled"
echo "== end t=$((SECONDS - T0)) s"
