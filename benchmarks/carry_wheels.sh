#!/usr/bin/env bash
# Downloads, where pip reaches PyPI, the wheels a lent GPU machine without network lacks for the
# accelerator check, in folders sized for its transfers (at most 64 MiB a call, the tree included):
#
#   bash benchmarks/carry_wheels.sh [--python-version 3.12] [--piece-mib 60]
#
#   .whl/       ml_collections: train.py on synthetic data and the tests (with the machine's own
#               JAX, flax, optax, orbax-checkpoint, einops);
#   .tf/deps/   tensorflow-datasets and the small packages TensorFlow and tfds import that the
#               machine lacks (device tool, KINDS.md's package list), about 13 MiB;
#   .tf/pieces/ tensorflow-cpu's wheel (about 260 MiB) cut in pieces of --piece-mib, with its sha256:
#               accelerator_check.sh joins them and checks the sum (--wheels .tf/pieces).
# git ignores the three folders. The input pipeline needs all of them; a call carries .whl, .tf/deps
# and one piece, the next calls a piece each (BENCHMARKS.md, "For the next GPU session"). Versions
# are those this project runs on here; TensorFlow's protobuf replaces the machine's, so give
# .tf/deps only to the input-pipeline step. What is already there is kept (remove .tf/pieces to
# cut them at another size).
set -euo pipefail
cd "$(dirname "$0")/.."
python_version=3.12 piece_mib=60
while [ $# -gt 0 ]; do
  case "$1" in
    --python-version) python_version=${2:?--python-version needs e.g. 3.12}; shift 2 ;;
    --piece-mib) piece_mib=${2:?--piece-mib needs a size in MiB}; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0" | cut -c3-; exit 0 ;;
    *) echo "error: unknown argument $1 (--help says more)" >&2; exit 2 ;;
  esac
done
[[ "$piece_mib" =~ ^[0-9]+$ ]] && [ "$piece_mib" -ge 1 ] && [ "$piece_mib" -le 63 ] \
  || { echo "error: --piece-mib $piece_mib: give whole MiB from 1 to 63 (a call carries 64)" >&2; exit 2; }
tensorflow=tensorflow-cpu==2.21.0
tf_deps=(tensorflow-datasets==4.9.10 protobuf==7.36.2 astunparse gast google-pasta termcolor keras
         namex optree array_record dm-tree immutabledict simple_parsing docstring-parser
         tensorflow-metadata googleapis-common-protos toml)
download() {  # folder, packages: binary wheels for the machine's Python and platform, no deps
  local tag=${python_version/./}
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$python_version" \
    --implementation cp --abi "cp$tag" --abi abi3 --abi none \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
    -d "$1" "${@:2}" \
    || { echo "error: pip could not download ${*:2} for Python $python_version (is PyPI reachable?)" >&2; exit 1; }
}

mkdir -p .whl .tf/deps .tf/pieces
download .whl ml_collections
download .tf/deps "${tf_deps[@]}"
# promise (a tfds dependency) has only a source release: build its pure-Python wheel here.
ls .tf/deps/promise-*.whl >/dev/null 2>&1 \
  || python3 -m pip wheel -q --no-deps -w .tf/deps promise==2.3 \
  || { echo "error: could not build promise's wheel" >&2; exit 1; }

sums=(.tf/pieces/tensorflow_cpu-*.whl.sha256)
if [ ! -e "${sums[0]}" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  download "$tmp" "$tensorflow"
  whl=("$tmp"/*.whl)
  name=${whl[0]##*/}
  (cd "$tmp" && sha256sum "$name" > "$name.sha256" && split -b "${piece_mib}M" "$name" "$name.part-")
  mv "$tmp/$name".part-* "$tmp/$name.sha256" .tf/pieces/
fi

echo "ready (carry .whl for train.py and the tests; .whl, .tf/deps and .tf/pieces for the input pipeline):"
du -sh .whl .tf/deps .tf/pieces
ls -l .tf/pieces | awk 'NR > 1 {printf "  %s  %.1f MiB\n", $NF, $5 / 1048576}'
