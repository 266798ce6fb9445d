#!/usr/bin/env bash
# The GPU check: the CUDA tests, then timed 5-fold runs from a cold cache on the GPU (each through
# bench_cv.py, which prints the CV summary, the training wall time and `mmsent predict`'s wall time).
#
#   bash benchmarks/bench_gpu.sh [tests|runs|all] [DATA] [RUNS_DIR]
#
# runs: the frozen default and `--profile quality` (both encoders trained end to end), plus one run per extra
# flag set in $GPU_EXTRA_RUNS (";"-separated, e.g. "--profile quality --epochs 3 --encoder-lr 3e-5").
# PARALLEL=1 starts the runs side by side on the one GPU (their wall times then include the sharing).
set -uo pipefail
what=${1:-all}
data=${2:-../shared/data/mvsa}
runs=${3:-runs/gpu_check}
workers=${GPU_WORKERS:-8}
mkdir -p "$runs"
status=0

if [[ $what == tests || $what == all ]]; then
    echo "== pytest -m gpu"
    python -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider || status=1
fi

if [[ $what == runs || $what == all ]]; then
    flag_sets=("" "--profile quality")
    IFS=';' read -r -a extra <<< "${GPU_EXTRA_RUNS:-}"
    flag_sets+=("${extra[@]}")
    pids=()
    for i in "${!flag_sets[@]}"; do
        flags=${flag_sets[$i]}
        name=run$i
        echo "== $name: mmsent train --device cuda --workers $workers $flags" | tee "$runs/$name.log"
        # shellcheck disable=SC2086  # the flag set is split into words on purpose
        cmd=(python benchmarks/bench_cv.py --data "$data" --out "$runs/$name" -- --device cuda --workers "$workers" $flags)
        if [[ ${PARALLEL:-0} == 1 ]]; then
            "${cmd[@]}" >> "$runs/$name.log" 2>&1 &
            pids+=($!)
        else
            "${cmd[@]}" 2>&1 | tee -a "$runs/$name.log" || status=1
        fi
    done
    for pid in "${pids[@]}"; do wait "$pid" || status=1; done
    for i in "${!flag_sets[@]}"; do
        echo "== run$i: ${flag_sets[$i]:-(the default)}"
        tr '\r' '\n' < "$runs/run$i.log" | grep -a "fold ./5:\|5-fold\|features:\|wall\|Error\|error" || true
    done
fi
exit $status
