#!/usr/bin/env bash
# Issue 12's measurements on a lent GPU (15 minutes of device time, start-up included; 64 MiB a
# call; warm for 30 s after each), as five calls of the device tool, one after the other:
#
#   bash benchmarks/gpu_session.sh N        # N = 1 to 5; run `bash benchmarks/carry_wheels.sh` first
#
# Each call runs a slice of the accelerator check into /tmp/mixer_jax_check (kept while the
# machine stays warm, with the compilation cache) and copies it to $OUT; summary.md there always
# holds every measurement so far, so a session cut short still has its tables. What each call
# carries (W = .tf/pieces/tensorflow_cpu-2.21.0-cp312-cp312-manylinux_2_27_x86_64.whl):
#   1  .whl .tf/deps W.sha256 W.part-ae   B/16 training with XLA's default GEMMs (90 s at most),
#                                         then the sweep of B/16 and S/32 (the targets) on cuBLAS
#   2  W.part-aa                          the sweep of L/16 and H/14
#   3  W.part-ab                          the sweep of S/16, B/32 and L/32
#   4  W.part-ac                          train.py on synthetic data, the tests on the GPU
#   5  W.part-ad                          the host input pipeline (all pieces there by now)
# The check's --budget for each call is set below (200, 150, 120, 130 and 40 s, with call 1's
# 90 s before: about 12 minutes with the machine's start); give the device tool's timeout_s
# about 120 s more, as a compilation can outlast the budget. XLA_FLAGS defaults to cuBLAS GEMMs
# (--xla_gpu_enable_triton_gemm=false: with XLA's Triton GEMM autotuning a step took minutes to
# compile on 2026-11-27); call 1 says whether the default flags compile and run faster, and
# `XLA_FLAGS= bash ...` then uses them.
# A call that starts a fresh machine (the last reply said warm: false) has lost the earlier
# calls' files: it carries .whl again, and the pieces only if call 5 is still to come.
# TINY=1 rehearses the five calls on a CPU (OUT defaults to a temporary folder).
set -uo pipefail
cd "$(dirname "$0")/.."
call=${1:-}
[[ "$call" =~ ^[1-5]$ ]] || { echo "error: give the call's number, 1 to 5 (the comments at the top say what each does)" >&2; exit 2; }
out=${OUT:-$(mktemp -d /tmp/mixer_jax_session_out.XXXX)}
check=/tmp/mixer_jax_check
mkdir -p "$check" "$out"
export XLA_FLAGS=${XLA_FLAGS---xla_gpu_enable_triton_gemm=false} PYTHONUNBUFFERED=1
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/mixer_jax_cache}
tiny=() ; [ "${TINY:-0}" = 1 ] && tiny=(--tiny)
run_check() { bash benchmarks/accelerator_check.sh "$check" "${tiny[@]}" "$@"; }

case $call in
  1) if [ ${#tiny[@]} -eq 0 ] && [ -n "$XLA_FLAGS" ]; then  # the sweep's line is the other side
       echo "== XLA's default flags: B/16 training, batch 512, ours (the sweep times it with $XLA_FLAGS)"
       XLA_FLAGS= XLA_PYTHON_CLIENT_MEM_FRACTION=0.9 timeout 90 python3 benchmarks/throughput.py \
         --variant=B/16 --mode=train --batch_size=512 --dtype=bfloat16 --impl=ours \
         --json_out="$check/xla_flags.jsonl" 2>&1 | grep -E 'img/s|compiled|rror' \
         || echo "default XLA flags: no measurement within 90 s"
     fi
     run_check --wheels .whl --variants B/16,S/32 --steps sweep --budget "${BUDGET:-200}" ;;
  2) run_check --variants L/16,H/14 --steps sweep --budget "${BUDGET:-150}" ;;
  3) run_check --variants S/16,B/32,L/32 --steps sweep --budget "${BUDGET:-120}" ;;
  4) run_check --wheels .whl --steps train,tests --budget "${BUDGET:-130}" ;;
  5) run_check --wheels .whl --wheels .tf/deps --wheels .tf/pieces --steps pipeline --budget 40 ;;
esac
status=$?
cp "$check"/* "$out"/ 2>/dev/null
echo "== call $call done (status $status); $out holds: $(ls "$out" | tr '\n' ' ')"
exit $status
