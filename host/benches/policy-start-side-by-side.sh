#!/usr/bin/env bash
# A policy's start, side by side for two builds of the policy benchmark (say,
# before and after a change), in one run: each binary's child mode times the
# path of the policy file to a configured instance in a fresh process.
# Medians of 5 first starts (no compiled code kept) and 11 kept starts; for
# the second build, also after `capcache policy install`.
#
#   cargo bench -p capcache --bench policy --no-run   # on each commit; copy the binary
#   bash host/benches/policy-start-side-by-side.sh BEFORE_BIN AFTER_BIN CAPCACHE_BIN POLICY...
#
# POLICY: "default" or an absolute path to a component.
set -euo pipefail
before=$1 after=$2 capcache=$3
shift 3
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
median() { sort -n | awk '{ v[NR] = $1 } END { printf "%.2f", v[int((NR + 1) / 2)] / 1000 }'; }
start() { CAPCACHE_BENCH_CHILD_OPEN=$2 CAPCACHE_BENCH_POLICY=$3 "$1"; }
for policy in "$@"; do
  name=$(basename "$policy" .wasm)
  for build in before after; do
    bin=${!build}
    dir="$scratch/$build-$name"
    mkdir -p "$dir"
    first=$(for _ in 1 2 3 4 5; do rm -rf "$dir/policy-code"; start "$bin" "$dir" "$policy"; done | median)
    kept=$(for _ in $(seq 11); do start "$bin" "$dir" "$policy"; done | median)
    echo "$name $build: first start $first ms, kept code $kept ms"
    if [ "$build" = after ]; then
      "$capcache" policy install "$policy" --dir "$dir" >/dev/null
      installed=$(for _ in $(seq 11); do start "$bin" "$dir" "$policy"; done | median)
      echo "$name $build: installed optimized code kept $installed ms"
    fi
  done
done
