#!/usr/bin/env bash
# Every benchmark, one command (`make bench`): tiling stage, stain normalizers, training core, workflow scale.
# Each prints its own table with ratios against a baseline measured in the same run and writes a
# JSON under bench_out/. Run on a quiet machine; each script documents its options.
#   BENCH_QUICK=1 make bench    smaller inputs (minutes instead of ~half an hour), same measurements
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${BENCH_OUT:-bench_out}
mkdir -p "$OUT"
if [[ -n "${BENCH_QUICK:-}" ]]; then
  TILING_ARGS=(--size 8192 --no-half); SYNTH_ARGS=(--size 8192); STAIN_ARGS=(--tiles 24 --rounds 2); TRAIN_ARGS=(--steps 3 --loader-tiles 512); SCALE_ARGS=(--sizes 9 18 --dry-slides 200)
else
  TILING_ARGS=(--codecs); SYNTH_ARGS=(); STAIN_ARGS=(); TRAIN_ARGS=(); SCALE_ARGS=()
fi
echo "== tiling: whole stage vs bare read_region on a 16384^2 slide of real pixels (../shared/data) =="
"$PY" benchmarks/bench_tiling.py --out "$OUT" "${TILING_ARGS[@]}"
echo "== tiling: the same on a stainshift.synth slide =="
"$PY" benchmarks/bench_tiling.py --source synth --out "$OUT/synth" --no-half "${SYNTH_ARGS[@]}"
echo "== stain normalizers vs torchstain / StainTools =="
"$PY" benchmarks/bench_stain.py --json "$OUT/bench_stain.json" "${STAIN_ARGS[@]}"
echo "== training core: loader tiles/s and images/s per method =="
"$PY" benchmarks/bench_train.py --out "$OUT/bench_train.json" "${TRAIN_ARGS[@]}"
echo "== workflow scale: demo DAG at 12/24/48 slides, 1000-slide dry run, single-stage re-runs =="
"$PY" benchmarks/bench_scale.py --out "$OUT" "${SCALE_ARGS[@]}"
"$PY" benchmarks/summary.py "$OUT"
