#!/usr/bin/env bash
# The accelerator check: everything a GPU (or TPU) session has to show, in one command.
#
#   bash benchmarks/accelerator_check.sh OUT_DIR [--wheels DIR]... [--budget SECONDS]
#        [--variants LIST] [--impls LIST] [--steps LIST] [--tiny]
#
# In order, each step's output in OUT_DIR (at most 6 files, all logged to check.log too):
#   1. throughput.jsonl  the sweep of benchmarks/throughput.py: all seven variants, bfloat16,
#                        inference and training, the largest batch of AUTO_BATCH_SIZES that fits,
#                        ours against the reference formulation, token_major and fused (the
#                        Pallas token-mixing kernels; --impls to choose), with the measured
#                        matmul rate, most important variants first (B/16, S/32, L/16);
#   2. train_synthetic.jsonl  train.py on synthetic data (configs/synthetic.py) for B/16 at the
#                        sweep's best training batch: its metrics.jsonl, the loop's images/s;
#   3. tests.log         the model, step, checkpoint, synthetic-data and fused-kernel tests on
#                        the device;
#   4. input_pipeline.jsonl  the host's ImageNet-style input pipeline with RandAugment, images/s
#                        (needs TensorFlow; skipped with the reason where it is missing);
#   5. summary.md        the tables of benchmarks/accelerator_summary.py, against the targets.
# --budget (default 480 s) bounds the whole check: the sweep stops starting measurements when
# the later steps' share is reached. --variants (comma-separated, default all seven) and --steps
# (some of sweep,train,tests,pipeline; default all) split the work between calls; a later call
# appends to the same OUT_DIR, and the summary reads whatever is there. Compiled programs go to
# a persistent cache ($JAX_COMPILATION_CACHE_DIR, default /tmp/mixer_jax_cache), so repeated
# shapes compile once and a second run on the same machine skips compilation.
#
# A machine with JAX but without this project's other dependencies (a lent GPU without network)
# gets them as wheels: download them where pip works, for the machine's Python, e.g.
#   pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl ml_collections
# and pass --wheels .whl; they are installed into a temporary folder, not into the system.
# train.py on synthetic data and the tests need JAX, flax, optax, orbax-checkpoint, einops and
# ml_collections; the input pipeline TensorFlow (a 260 MB wheel) and tensorflow-datasets. Where
# transfers are limited in size, a wheel can travel in pieces, `split -b 50M X.whl X.whl.part-`
# (with `sha256sum X.whl > X.whl.sha256` beside them), over several calls or folders: each
# --wheels folder's X.whl.part-* are joined, in name order, and checked against X.whl.sha256.
#
# --tiny rehearses every step on a CPU in about a minute (S/32 at 64 px, batch 2, one test):
# tests/test_benchmarks.py runs it so that the script cannot break unseen.
set -uo pipefail
cd "$(dirname "$0")/.."
usage='benchmarks/accelerator_check.sh OUT_DIR [--wheels DIR]... [--budget SECONDS] [--variants LIST] [--impls LIST] [--steps LIST] [--tiny]'
case "${1:-}" in
  -h|--help) echo "usage: $usage (the comments at the top of this file say more)"; exit 0 ;;
  ''|-*) echo "error: the first argument is the output folder (usage: $usage)" >&2; exit 2 ;;
esac
out=$1
shift
wheels=() budget=480 tiny=0 variants='' impls='' steps=sweep,train,tests,pipeline
while [ $# -gt 0 ]; do
  case "$1" in
    --wheels) wheels+=("${2:?--wheels needs a folder}"); shift 2 ;;
    --budget) budget=${2:?--budget needs seconds}; shift 2 ;;
    --variants) variants=${2:?--variants needs a list, e.g. S/32,L/16}; shift 2 ;;
    --impls) impls=${2:?--impls needs a list, e.g. ours,reference}; shift 2 ;;
    --steps) steps=${2:?--steps needs some of sweep,train,tests,pipeline}; shift 2 ;;
    --tiny) tiny=1; shift ;;
    *) echo "error: unknown argument $1 (usage: $usage)" >&2; exit 2 ;;
  esac
done
[[ "$budget" =~ ^[0-9]+$ ]] || { echo "error: --budget $budget: give whole seconds" >&2; exit 2; }
for step in ${steps//,/ }; do
  [[ "$step" =~ ^(sweep|train|tests|pipeline)$ ]] \
    || { echo "error: --steps: unknown step $step (use some of sweep,train,tests,pipeline)" >&2; exit 2; }
done
runs() { [[ ",$steps," == *",$1,"* ]]; }
mkdir -p "$out" || { echo "error: cannot create $out" >&2; exit 2; }
out=$(cd "$out" && pwd)
exec > >(tee -a "$out/check.log") 2>&1
start=$SECONDS
elapsed() { echo $((SECONDS - start)); }
failed=()

if [ ${#wheels[@]} -gt 0 ]; then
  site=$(mktemp -d /tmp/mixer_jax_site.XXXX)
  trap 'rm -rf "$site"' EXIT  # the installed wheels are this run's alone
  whl=()
  for dir in "${wheels[@]}"; do
    [ -d "$dir" ] || { echo "error: --wheels $dir: no such folder"; exit 2; }
    for first in "$dir"/*.whl.part-*; do  # a wheel in pieces: join them once, at the first
      [ -e "$first" ] || break
      name=${first%.part-*}
      [ -e "$site/pieces/${name##*/}" ] && continue
      mkdir -p "$site/pieces"
      pieces=("$name".part-*)
      cat "${pieces[@]}" > "$site/pieces/${name##*/}"
      if [ -e "$name.sha256" ]; then
        [ "$(sha256sum < "$site/pieces/${name##*/}" | cut -d' ' -f1)" = "$(cut -d' ' -f1 "$name.sha256")" ] \
          || { echo "error: ${name##*/}: its ${#pieces[@]} pieces in $dir do not match $name.sha256; a piece is missing or damaged: carry all of them"; exit 2; }
      fi
      echo "joined ${name##*/} from ${#pieces[@]} pieces"
      whl+=("$site/pieces/${name##*/}")
    done
    for w in "$dir"/*.whl; do [ -e "$w" ] && whl+=("$w"); done
  done
  [ ${#whl[@]} -gt 0 ] || { echo "error: no .whl files (or pieces) in ${wheels[*]}"; exit 2; }
  PIP_ROOT_USER_ACTION=ignore python3 -m pip install -q --no-index --no-deps --no-compile \
    --no-cache-dir --target "$site" "${whl[@]}" \
    || { echo "error: the wheels in ${wheels[*]} did not install"; exit 2; }
  echo "installed ${#whl[@]} wheels: ${whl[*]##*/}"
  rm -rf "$site/pieces"
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=1
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/mixer_jax_cache}
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=0
export JAX_PERSISTENT_CACHE_ENABLE_XLA_CACHES=xla_gpu_per_fusion_autotune_cache_dir

echo "== accelerator check, $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c 'import sys, jax, flax, optax; print("python", sys.version.split()[0], "jax", jax.__version__, "flax", flax.__version__, "optax", optax.__version__, "devices", jax.devices())' \
  || { echo "error: JAX or flax does not import (see above)"; exit 1; }
echo "host cores: $(nproc)"

if [ "$tiny" = 1 ]; then
  # On CPU also the implementations timed in child processes.
  sweep=(--variant=S/32 --resolution=64 --batch_size=2 --steps=1 --repeats=1 --matmul_size=128
         --dtype=float32 --impl=ours,reference,fused,reference_default_host,timm)
  train=(--config=configs/synthetic.py:S/32,smoke --config.dtype=float32)
  train_steps=(--config.total_steps=4 --config.log_every=2)
  tests=(tests/test_models.py -k test_parameter_names_match_official_checkpoints)
  pipeline=(--seconds=1 --num_images=8 --image_size=64)
  share=(train 0 tests 0 pipeline 0)
else
  sweep=(--variant=${variants:-B/16,S/32,L/16,H/14,S/16,B/32,L/32} --batch_size=auto
         --largest_that_fits --dtype=bfloat16 --impl=${impls:-ours,reference,token_major,fused})
  train=(--config=configs/synthetic.py:B/16)
  train_steps=(--config.total_steps=150 --config.log_every=50)
  tests=(tests/test_models.py tests/test_steps.py tests/test_checkpoints.py tests/test_synthetic.py
         tests/test_fused_token_mlp.py)
  python3 -c 'import xdist' 2>/dev/null && tests+=(-n 8)  # pytest-xdist: compile in parallel
  pipeline=(--seconds=10)
  share=(train 70 tests 70 pipeline 30)  # seconds of the budget the later steps take
fi
reserve=0
for ((i = 0; i < ${#share[@]}; i += 2)); do
  runs "${share[i]}" && reserve=$((reserve + share[i + 1]))
done

if runs sweep; then
  echo "== 1. throughput sweep (t=$(elapsed) s)"
  deadline=$((budget > reserve ? budget - reserve : 1))
  # The deadline stops new measurements; the timeout also ends a compilation that never returns.
  XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9} timeout $((deadline + 150)) \
    python3 benchmarks/throughput.py "${sweep[@]}" --mode=both --deadline=$deadline \
    --compile_threads=${COMPILE_THREADS:-0} --json_out="$out/throughput.jsonl" || failed+=(throughput)
fi

if runs train; then
  echo "== 2. train.py on synthetic data (t=$(elapsed) s)"
  batch=$(python3 - "$out/throughput.jsonl" "${train[0]#*:}" <<'EOF'
import json, sys
variant = sys.argv[2].split(',')[0]
try:
  lines = [json.loads(l) for l in open(sys.argv[1])]
except OSError:
  lines = []
best = max((r for r in lines if r['impl'] == 'ours' and r['mode'] == 'train'
            and r['variant'] == variant), key=lambda r: r['images_per_sec'], default=None)
print(best['batch_per_device'] * best['devices'] if best else '')
EOF
  )
  workdir=$(mktemp -d /tmp/mixer_jax_synthetic.XXXX)
  python3 train.py "${train[@]}" --workdir="$workdir" ${batch:+--config.batch_size=$batch} \
    ${batch:+--config.eval_batch_size=$batch} "${train_steps[@]}" \
    && cp "$workdir/metrics.jsonl" "$out/train_synthetic.jsonl" || failed+=(train.py)
  echo "{\"config\": \"${train[0]#*=}\", \"batch_size\": ${batch:-0}}" >> "$out/train_synthetic.jsonl"
  rm -rf "$workdir"
fi

if runs tests; then
  echo "== 3. tests on $(python3 -c 'import jax; print(jax.default_backend())') (t=$(elapsed) s)"
  XLA_PYTHON_CLIENT_PREALLOCATE=false python3 -m pytest -q -p no:cacheprovider "${tests[@]}" \
    2>&1 | tee "$out/tests.log" || failed+=(tests)
fi

if runs pipeline; then
  echo "== 4. host input pipeline (t=$(elapsed) s)"
  # Looked up, not imported: an import takes 10 s, which the benchmark then spends again.
  if missing=$(python3 -c 'import importlib.util as u
print(" and ".join(m for m in ("tensorflow", "tensorflow_datasets") if not u.find_spec(m)))') \
      && [ -z "$missing" ]; then
    JAX_PLATFORMS=cpu python3 benchmarks/input_pipeline.py "${pipeline[@]}" \
      --json_out="$out/input_pipeline.jsonl" || failed+=(input_pipeline)
  else
    echo "skipped: ${missing:-TensorFlow} not installed here (the input pipeline is tf.data)"
  fi
fi

echo "== 5. summary (t=$(elapsed) s)"
python3 benchmarks/accelerator_summary.py "$out" | tee "$out/summary.md" || failed+=(summary)
echo "== done in $(elapsed) s${failed[*]:+; FAILED: ${failed[*]}}"
[ ${#failed[@]} -eq 0 ]
