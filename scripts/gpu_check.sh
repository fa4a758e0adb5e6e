#!/usr/bin/env bash
# Run the real engine's GPU tests and benchmarks on a CUDA machine; results go to OUTDIR.
#
#   bash scripts/gpu_check.sh [OUTDIR]          GPU tests, roofline and host-overhead benchmarks, and a
#                                               bench smoke run (~10 min on an H100, before the
#                                               cold-shape bench and the host-step probe joined)
#   FULL=1 bash scripts/gpu_check.sh [OUTDIR]   also a fresh profile (all parts) and nexus-real validate
#                                               on five workloads, all on this GPU (each step <= 10 min)
#   MAXRATE=1 bash scripts/gpu_check.sh [OUTDIR]  also nexus-real max-rate of nexus-slo against tuned and
#                                               default chunked, the best static split and nexus on the
#                                               conversation and mixed traces (about 26 min on an H200)
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
step roofline_vs_profile 120 $PY experiments/roofline_vs_profile.py "$OUTDIR/real_roofline_h200.json" \
    --out "$OUTDIR/roofline_vs_profile_h200.json"
step bench_prefill_attention 300 $PY experiments/bench_prefill_attention.py --out "$OUTDIR/prefill_attention_h200.json"
step bench_cold_shapes 300 $PY experiments/bench_cold_shapes.py --out "$OUTDIR/cold_shapes_h200.json"
# prefill-first's first long steps of a process, after the engine's warm-up (real.bench.warm_up), and
# first chunks after new prefixes on the dense path
step bench_cold_shapes_warm_up 300 $PY experiments/bench_cold_shapes.py --warm-up \
    --shapes 3529:0,4797:0+1019:0,1000:0+2014:0+1000:0+3075:0+1000:0,2048:8000,2048:12345 --out "$OUTDIR/cold_shapes_warm_up_h200.json"
step probe_host_step 300 $PY experiments/probe_host_step.py --out "$OUTDIR/host_step_h200.json"
step bench_prefill_buckets 300 $PY experiments/bench_prefill_buckets.py --out "$OUTDIR/prefill_buckets_h200.json"
step bench_decode_process 300 $PY experiments/bench_decode_process.py --small-cache --out "$OUTDIR/decode_process_h200.json"
step bench_decode_contexts 300 $PY experiments/bench_decode_contexts.py --out "$OUTDIR/decode_contexts_h200.json"
step bench_decode_drift 300 $PY experiments/bench_decode_drift.py --seconds 120 --out "$OUTDIR/decode_drift_h200.json"
step bench_corun_window 300 $PY experiments/bench_corun_window.py --out "$OUTDIR/corun_window_h200.json"
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
    # longdoc's 6-16k prompts put most chunks after 4096+ cached tokens (the dense path's
    # chunks after a prefix), which longprompt's meet in 4 prompts of 100.
    for pair in "short sharegpt=traces/sharegpt.jsonl bursty=experiments/workloads/bursty.jsonl mixed=traces/mixed.jsonl" \
                "long longprompt=experiments/workloads/longprompt.jsonl" \
                "longdoc longdoc=experiments/workloads/longdoc.jsonl"; do
        set -- $pair
        name=$1; shift
        step "validate_$name" 600 $PY -m real.cli validate --calibration "$cal" --limit 100 \
            $(printf -- '--trace %s ' "$@") \
            --policy chunked --policy static --policy nexus --policy nexus:beta=2 \
            --loads auto=0.7,1.2 --out "$OUTDIR/validate_$name"
    done
    step fidelity_merge 120 $PY experiments/fidelity_merge.py --run "$OUTDIR/validate_short" \
        --run "$OUTDIR/validate_long" --run "$OUTDIR/validate_longdoc" --out "$OUTDIR/fidelity"
fi

if [ "${MAXRATE:-0}" = 1 ]; then
    # The engine's max rate under each workload's SLO, probed around the simulator's prediction.
    # Tuned settings are the simulator's best for the SLO (experiments/goodput.py); nexus, whose
    # max rate is a tenth of the others', runs on 60 requests so that a probe takes under a minute.
    conv="$OUTDIR/conversation.jsonl"
    $PY -m traces.cli synthetic --input lognormal:mean=1100,median=700,max=8000 \
        --output lognormal:mean=250,median=150,max=2000 --cv 2 -n 1500 --rate 1 --seed 0 -o "$conv"
    step max_rate_conversation 600 $PY -m real.cli max-rate --trace "$conv" --limit 240 --slo-ttft 1 \
        --slo-tbt 0.035 --policy nexus-slo --policy chunked:max_num_batched_tokens=1024 \
        --policy static:prefill_sms=80 --policy chunked --out "$OUTDIR/max_rate_conversation"
    step max_rate_mixed 600 $PY -m real.cli max-rate --trace traces/mixed.jsonl --limit 160 --slo-ttft 2.1 \
        --slo-tbt 0.027 --policy nexus-slo --policy chunked:max_num_batched_tokens=512 \
        --policy static:prefill_sms=96 --policy chunked --out "$OUTDIR/max_rate_mixed"
    step max_rate_nexus_conversation 400 $PY -m real.cli max-rate --trace "$conv" --limit 60 --slo-ttft 1 \
        --slo-tbt 0.035 --policy nexus --out "$OUTDIR/max_rate_conversation_nexus"
    step max_rate_nexus_mixed 400 $PY -m real.cli max-rate --trace traces/mixed.jsonl --limit 60 --slo-ttft 2.1 \
        --slo-tbt 0.027 --policy nexus --out "$OUTDIR/max_rate_mixed_nexus"
fi

echo "gpu_check: results in $OUTDIR (status $status)"
exit $status
