"""Compiled with mypyc (scripts/compile_sim.py), the simulator gives every run to the last bit.

A copy of the sources runs every policy, is compiled, and runs them again; the summary, every
request's record and every step of the timeline must hash the same, and the second runs must
really have used the compiled modules.
"""
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(importlib.util.find_spec("mypyc") is None or shutil.which("cc") is None,
                                reason="needs mypyc (pip install -e '.[compiled]') and a C compiler")

# Each policy on the shipped conversation trace at three times its rate (seats and KV run out,
# so requests queue and are preempted), and Nexus-SLO and disagg with settings of their own;
# then a cost model sent through pickle, as a sweep sends one to its workers, and asked at
# numpy SM counts.
RUNS = """
import hashlib, json, pickle, sys
import sim, sim.gpu
runs = [(p, {}) for p in ("chunked", "prefill-first", "static", "nexus", "nexus-slo", "disagg")]
runs += [("nexus-slo", {"ttft_slo_s": 0.5, "tbt_slo_s": 0.03}), ("disagg", {"link": "pcie4"})]
out = {}
for policy, params in runs:
    r = sim.run("traces/sharegpt.jsonl", policy=policy, rate_scale=3.0, policy_params=params)
    blob = pickle.dumps((json.dumps(r.summary, sort_keys=True, default=str), r.requests.to_dict("list"),
                         r.timeline.to_dict("list")))
    out[policy + json.dumps(params)] = hashlib.sha256(blob).hexdigest()
from nexus.cost import load_cost_model
from nexus.cost.base import BatchShape
from nexus.specs import GPUS, MODELS
cost = pickle.loads(pickle.dumps(load_cost_model(MODELS["llama-3.1-8b"], GPUS["h200"], None)))   # as sent to a worker
shape, decode = BatchShape(((513, 1024),), 7, 9000), BatchShape((), 40, 50_000)
out["pickled cost model"] = repr([cost.solo_time(shape, s) * cost.slowdown(shape, s, decode, 132 - s) for s in (24, 68)])
import numpy as np   # a numpy integer is no int to compiled code: the cost model takes one all the same
out["numpy SM count"] = repr([cost.solo_time(x, np.int64(24)) * cost.slowdown(x, np.int64(24), decode, np.int64(108))
                              for x in (shape, decode)])
import nexus.cost.measured
compiled = [not m.__file__.endswith(".py") for m in (sim.gpu, nexus.cost.measured)]
print(json.dumps({"compiled": all(compiled), "interpreted": not any(compiled), "runs": out}))
"""


def _runs(src: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", RUNS], cwd=src, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout)


def test_compiled_simulator_gives_the_same_runs_to_the_bit(tmp_path):
    src = tmp_path / "src"
    for part in ("sim", "nexus", "traces", "scripts"):
        shutil.copytree(ROOT / part, src / part, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    before = _runs(src)
    build = subprocess.run([sys.executable, "scripts/compile_sim.py"], cwd=src, capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    after = _runs(src)
    assert before["interpreted"] and after["compiled"]
    assert after["runs"] == before["runs"]
    assert len(set(before["runs"].values())) == len(before["runs"])   # the runs differ from each other
    subprocess.run([sys.executable, "scripts/compile_sim.py", "--clean"], cwd=src, check=True)
    assert not [*src.glob("*.so"), *(src / "sim").rglob("*.so"), *(src / "nexus").rglob("*.so")]
