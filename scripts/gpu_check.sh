#!/usr/bin/env bash
# Run the real engine's GPU tests and benchmarks on a CUDA machine; results go to OUTDIR.
#
#   bash scripts/gpu_check.sh [OUTDIR]          GPU tests, roofline and host-overhead benchmarks, and a
#                                               bench smoke run (~8 min on an H100)
#   FULL=1 bash scripts/gpu_check.sh [OUTDIR]   also a fresh profile (all parts) and nexus-real validate
#                                               on four workloads, all on this GPU (each step <= 10 min)
#
# Works from a plain checkout (no pip install): the repo root goes on PYTHONPATH.
# Exit status is non-zero if any step failed; every step runs regardless.
set -uo pipefail
cd "$(dirname "$0")/.."
OUTDIR=${1:-gpu_check_out}
PY=${PYTHON:-python3}
mkdir -p "$OUTDIR"
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

if ! $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: torch sees no CUDA GPU" >&2
    exit 2
fi
nvidia-smi > "$OUTDIR/nvidia-smi.txt" 2>&1 || true
status=0

step() {  # step NAME TIMEOUT_S COMMAND...: run one step, log it, remember a failure
    local name=$1 limit=$2
    shift 2
    echo "== $name"
    timeout "$limit" "$@" 2>&1 | tee "$OUTDIR/$name.log"
    local rc=${PIPESTATUS[0]}
    [ "$rc" -eq 0 ] || { echo "== $name FAILED (exit $rc)"; status=1; }
}

# --noconftest: the GPU tests need none of the suite's fixtures, and the shared conftest
# imports modules (simulator, traces) whose dependencies a GPU box may lack.
step gpu_tests 900 $PY -m pytest -m gpu --noconftest -p no:cacheprovider -q -rs tests/test_real_*.py \
    --junitxml "$OUTDIR/gpu_tests.xml"
step bench_real_roofline 600 $PY experiments/bench_real_roofline.py --out "$OUTDIR/real_roofline_h200.json"
step bench_decode_contexts 300 $PY experiments/bench_decode_contexts.py --out "$OUTDIR/decode_contexts_h200.json"
step bench_host_overhead 600 $PY experiments/bench_host_overhead.py --out "$OUTDIR/host_overhead_h100.json"
step bench_smoke 600 $PY -m real.cli bench --trace traces/sharegpt.jsonl --limit 100 \
    --compare chunked,static,nexus --out "$OUTDIR/bench_smoke"

if [ "${FULL:-0}" = 1 ]; then
    # A calibration and the fidelity study on one machine: boards differ by a few % in step
    # time, as much as the fidelity targets allow. The profile measures every part, the
    # engine's host gap included (an engine replay of a synthetic trace).
    cal="$OUTDIR/calibration.json"
    step profile 600 $PY -m real.cli profile --repeats 5 --out "$cal"
    # 100 requests a trace: the four traces x four policies x two loads take about 10 minutes
    # on an H200, so the long-prompt trace runs as a second call.
    for pair in "short sharegpt=traces/sharegpt.jsonl bursty=experiments/workloads/bursty.jsonl mixed=traces/mixed.jsonl" \
                "long longprompt=experiments/workloads/longprompt.jsonl"; do
        set -- $pair
        name=$1; shift
        step "validate_$name" 600 $PY -m real.cli validate --calibration "$cal" --limit 100 \
            $(printf -- '--trace %s ' "$@") \
            --policy chunked --policy static --policy nexus --policy nexus:beta=2 \
            --loads auto=0.7,1.2 --out "$OUTDIR/validate_$name"
    done
fi

echo "gpu_check: results in $OUTDIR (status $status)"
exit $status
