"""nexus-sim --max-rate, --grid and --sweep: the files they write agree with direct simulation."""
import json

import pytest

import sim
from nexus.specs import GPUS
from sim.cli import main
from sim.probe import SLO
from synthetic import make_trace
from traces import write_trace
from traces.retime import load_entries

SLO_ARGS = ["--slo-ttft", "0.3", "--slo-tbt", "0.04"]


@pytest.fixture(scope="module")
def trace_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("trace") / "t.jsonl"
    write_trace(make_trace(160, 10.0, (16, 1500), (2, 150)), path)
    return path


@pytest.fixture(scope="module")
def max_rate_run(trace_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("mr")
    assert main(["--trace", str(trace_file), "--max-rate", *SLO_ARGS, "--compare", "chunked,static",
                 "--grid", "chunked:max_num_batched_tokens=256,1024", "--jobs", "2", "--quiet",
                 "--out", str(out)]) == 0
    return json.loads((out / "max_rate.json").read_text())


def test_max_rate_json_brackets_each_policy_as_direct_runs_confirm(max_rate_run, trace_file):
    rec = max_rate_run
    assert rec["unit"] == "scale" and rec["slo"]["percentile"] == "p95"
    assert rec["trace"]["count"] == 160 and rec["command"].startswith("nexus-sim ")
    assert set(rec["policies"]) == {"chunked", "static", "chunked max_num_batched_tokens=256",
                                    "chunked max_num_batched_tokens=1024"}
    slo = SLO(0.3, 0.04)
    for label, r in rec["policies"].items():
        assert r["status"] == "bracketed", label
        assert r["max_rate"] < r["min_failing"] <= r["max_rate"] * 1.02 * (1 + 1e-9)
        oks = {p["rate"]: p["ok"] for p in r["probes"]}
        assert oks[r["max_rate"]] and not oks[r["min_failing"]]
        # The verdict is reproduced by a plain simulation at those scales.
        params = {k: v for k, v in r["policy"].items() if k != "policy"}
        for scale, ok in ((r["max_rate"], True), (r["min_failing"], False)):
            res = sim.run(str(trace_file), policy=r["policy"]["policy"], policy_params=params,
                          rate_scale=scale)
            assert slo.met(res.summary) is ok, (label, scale)
    first = rec["policies"]["chunked"]["max_rate"]
    assert rec["policies"]["static"]["ratio_to_first"] == pytest.approx(rec["policies"]["static"]["max_rate"] / first)


def test_grid_reports_each_setting_and_the_best(max_rate_run):
    grid = max_rate_run["grids"]["chunked:max_num_batched_tokens"]
    rates = {k: max_rate_run["policies"][k]["max_rate"] for k in grid["settings"]}
    assert grid["settings"] == rates
    assert grid["best_max_rate"] == max(rates.values()) == rates[grid["best"]]


def test_short_trace_warns(trace_file, tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["--trace", str(trace_file), "--limit", "40", "--max-rate", *SLO_ARGS, "--policy", "chunked",
                 "--jobs", "1", "--quiet", "--out", str(out)]) == 0
    rec = json.loads((out / "max_rate.json").read_text())
    state = rec["policies"]["chunked"]["steady_state"]
    assert state["turnovers"] < 10 and "too short for a steady state" in state["warning"]
    assert rec["warnings"] and "too short" in capsys.readouterr().err


def test_poisson_rate_unit_redraws_arrivals(trace_file, tmp_path):
    out = tmp_path / "o"
    assert main(["--trace", str(trace_file), "--max-rate", *SLO_ARGS, "--policy", "chunked", "--rate", "20",
                 "--jobs", "1", "--quiet", "--out", str(out)]) == 0
    r = json.loads((out / "max_rate.json").read_text())["policies"]["chunked"]
    assert json.loads((out / "max_rate.json").read_text())["unit"] == "rate"
    res = sim.run(str(trace_file), policy="chunked", rate=r["max_rate"], seed=0)
    assert SLO(0.3, 0.04).met(res.summary)
    # Offered req/s is the Poisson rate itself, up to the sample's own mean gap.
    assert r["max_rate_rps"] == pytest.approx(r["max_rate"], rel=0.25)


def test_sweep_writes_points_in_load_order_and_a_figure(trace_file, tmp_path):
    out = tmp_path / "s"
    assert main(["--trace", str(trace_file), "--sweep", "2,0.5,1", "--compare", "chunked,nexus", "--quiet",
                 "--jobs", "2", "--out", str(out)]) == 0
    rec = json.loads((out / "sweep.json").read_text())
    for label in ("chunked", "nexus"):
        pts = rec["policies"][label]["points"]
        assert [p["scale"] for p in pts] == [0.5, 1.0, 2.0]
        offered = [p["offered_rps"] for p in pts]
        assert offered[1] == pytest.approx(2 * offered[0]) and offered[2] == pytest.approx(4 * offered[0])
        direct = sim.run(str(trace_file), policy=label, rate_scale=2.0).summary
        assert pts[2]["ttft_s"]["p95"] == direct["ttft_s"]["p95"]
        assert pts[2]["tbt_s"]["mean"] == direct["tbt_s"]["mean"]
    assert (out / "sweep.png").stat().st_size > 5000


def test_ray_path_matches_the_process_pool(trace_file, tmp_path, max_rate_run):
    pytest.importorskip("ray")   # in the dev extra, so CI runs this
    out = tmp_path / "r"
    assert main(["--trace", str(trace_file), "--max-rate", *SLO_ARGS, "--compare", "chunked,static",
                 "--ray", "local", "--quiet", "--out", str(out)]) == 0
    rec = json.loads((out / "max_rate.json").read_text())
    def verdicts(r: dict) -> list:
        return [{k: v for k, v in p.items() if k != "sim_wall_s"} for p in r["probes"]]

    for label in ("chunked", "static"):
        assert verdicts(rec["policies"][label]) == verdicts(max_rate_run["policies"][label])


@pytest.mark.parametrize("argv, message", [
    (["--max-rate"], "needs --slo-ttft"),
    (["--max-rate", "--slo-tbt", "-1"], "positive number"),
    (["--max-rate", "--slo-tbt", "0.1", "--grid", "chunked:max_num_batched_tokens"], "--grid takes"),
    (["--grid", "chunked:max_num_batched_tokens=1"], "needs --max-rate or --sweep"),
    (["--sweep", "1,x"], "--sweep takes"),
    (["--max-rate", "--slo-tbt", "0.1", "--grid", "chunked:nope=1"], "nope"),
])
def test_bad_study_arguments_exit_2(trace_file, argv, message, capsys):
    assert main(["--trace", str(trace_file), "--quiet", "--jobs", "1", *argv]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("gpu", sorted(GPUS))
def test_every_gpu_runs_with_default_splits(gpu, capsys):
    entries = load_entries(make_trace(30, 5.0, (16, 600), (2, 40)))
    for policy in ("static", "nexus"):
        res = sim.run(entries, policy=policy, gpu=gpu, calibration="analytical")
        assert res.summary["requests"] == 30
        prefill, decode = GPUS[gpu].half_split()
        assert res.timeline["sms"].isin([0, prefill, decode] if policy == "static" else
                                        [0, *GPUS[gpu].partition_sizes(),
                                         *(GPUS[gpu].num_sms - s for s in GPUS[gpu].partition_sizes())]).all()


@pytest.mark.parametrize("argv", [["--gpu", "l20", "--calibration", "analytical"], ["--gpu", "a100-80gb"]])
def test_readme_gpu_commands_run_with_defaults(argv, capsys):
    assert main([*argv, "--limit", "50", "--compare", "chunked,static,nexus", "--quiet", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 3


def test_half_split_is_grantable_and_even():
    assert GPUS["h100-sxm"].half_split() == (64, 68)
    assert GPUS["l20"].half_split() == (46, 46)
    for gpu in GPUS.values():
        p, d = gpu.half_split()
        gpu.check_split(p, d)
        assert abs(p - d) <= 2 * gpu.sm_step + gpu.num_sms % gpu.sm_step
