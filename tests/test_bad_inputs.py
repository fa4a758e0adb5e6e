"""Every bad input gets one line naming the problem and exit status 2, before any work is done.

Each case is a repro from the robustness issue: before, it printed a traceback (exit 1),
a wrong diagnosis ("KV cache too small"), or nothing at all (the value was accepted).
"""
import json
import subprocess
import sys
from dataclasses import asdict

import pytest

import sim
from nexus.errors import UserError
from nexus.policy import PARAMS, POLICIES, Policy, build_policies, decode_step, make_policy, take_prefill_chunks
from nexus.state import Batch, Split
from nexus.specs import GPUS, MODELS, resolve_gpu, resolve_model
from sim.cli import main as _sim_main
from synthetic import make_trace
from traces import write_trace
from traces.cli import main as trace_main
from traces.format import read_trace
from traces.importers import read_vidur_csv
from traces.retime import load_entries


@pytest.fixture
def trace_file(tmp_path):
    path = tmp_path / "t.jsonl"
    write_trace(make_trace(20, 10.0, (16, 200), (2, 20)), path)
    return path


def sim_main(argv: list[str]) -> int:
    try:
        return _sim_main(argv)
    except SystemExit as e:   # argparse's errors exit from inside parse_args
        return e.code


def one_error_line(capsys, prog: str = "nexus-sim") -> str:
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{prog}: error: ") and "Traceback" not in err
    return lines[0]


def spec_file(tmp_path, name: str, data) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


def gpu_with(**fields) -> dict:
    return {**asdict(GPUS["h100-sxm"]), **fields}


def model_with(**fields) -> dict:
    return {**asdict(MODELS["llama-3.1-8b"]), **fields}


@pytest.mark.parametrize("args, message", [
    # were tracebacks
    (["--param", "beta=abc"], "policy parameter beta must be a number >= 1, got 'abc'"),
    (["--param", "chunk_tokens=1.5"], "policy parameter chunk_tokens must be an integer >= 1, got 1.5"),
    (["--rate", "5", "--seed", "-1"], "argument --seed: expected an integer >= 0, got '-1'"),
    (["--compare", ","], "--compare names no policy"),
    (["--compare", "nexus,nexus"], "--compare names nexus more than once"),
    # were "the KV cache is too small for this trace"
    (["--max-num-seqs", "0"], "argument --max-num-seqs: expected a positive integer, got '0'"),
    (["--param", "chunk_tokens=0"], "policy parameter chunk_tokens must be an integer >= 1, got 0"),
    # were accepted
    (["--param", "beta=-1"], "policy parameter beta must be >= 1"),
    (["--param", "beta=NaN"], "policy parameter beta must be >= 1"),
    (["--param", "beta=nan"], "policy parameter beta must be a number"),
    (["--param", "beta=Infinity"], "policy parameter beta must be >= 1"),
    (["--param", "alpha=-5"], "policy parameter alpha must be >= 1"),
    (["--param", "kv_threshold=2"], "policy parameter kv_threshold must be from 0 to 1"),
    (["--param", "spf=1"], "policy parameter spf must be true or false"),
    (["--slo-ttft", "-1"], "argument --slo-ttft: expected a positive number of seconds"),
    (["--slo-ttft", "nan"], "argument --slo-ttft: expected a positive number of seconds"),
    (["--slo-tbt", "inf"], "argument --slo-tbt: expected a positive number of seconds"),
    (["--policy", "chunked", "--param", "chunk_tokens=4096"],
     "chunked takes no parameter 'chunk_tokens' (static, nexus and nexus-slo take it)"),
    (["--compare", "chunked,prefill-first", "--param", "chunk_tokens=4096"],
     "chunked and prefill-first take no parameter 'chunk_tokens'"),
    (["--limit", "0"], "argument --limit: expected a positive integer"),
    (["--policy", "disagg", "--param", "link=infiniband"],
     "unknown link 'infiniband'; known: nvlink, pcie5, pcie4, or a link file (.json)"),
    (["--policy", "disagg", "--param", "link=/nonexistent/link.json"], "/nonexistent/link.json: no such link file"),
])
def test_sim_flag_errors(trace_file, capsys, args, message):
    assert sim_main(["--trace", str(trace_file), "--quiet", *args]) == 2
    assert message in one_error_line(capsys)


def test_compare_shares_a_parameter_any_listed_policy_takes(trace_file, capsys):
    assert sim_main(["--trace", str(trace_file), "--quiet", "--json", "--compare", "chunked,static",
                     "--param", "chunk_tokens=512"]) == 0
    summaries = json.loads(capsys.readouterr().out)
    assert [s["policy"] for s in summaries] == ["chunked", "static"]


def test_every_policy_parameter_has_a_declared_range():
    from inspect import signature
    for cls in POLICIES.values():
        for name in signature(cls.__init__).parameters:
            if name != "self":
                assert name in PARAMS, f"{cls.__name__}.{name} has no entry in nexus.policy.PARAMS"


def test_parameter_ranges_apply_to_the_python_api_too():
    with pytest.raises(UserError, match="beta must be >= 1"):
        make_policy("nexus", beta=0.5)
    with pytest.raises(UserError, match="takes no parameter 'beta'"):
        make_policy("static", beta=2.0)
    assert make_policy("nexus", beta=2.0, kv_threshold=0.0, gamma=0).beta == 2.0
    assert [p.name for p in build_policies(["static", "nexus"], {"chunk_tokens": 256})] == ["static", "nexus"]


@pytest.mark.parametrize("flag, make, message", [
    ("--model", lambda t: spec_file(t, "list.json", [1, 2]), "list.json: expected an object of spec fields, got a list"),
    ("--model", lambda t: (t / "dir.json").mkdir() or str(t / "dir.json"), "dir.json: is a folder, not a spec file"),
    ("--model", lambda t: (t / "l1.json").write_bytes(b'{"name": "\xe9"}') and str(t / "l1.json"), "l1.json: not UTF-8 text"),
    ("--model", lambda t: (t / "bad.toml").write_text("name = ") and str(t / "bad.toml"), "bad.toml: not valid TOML"),
    ("--gpu", lambda t: spec_file(t, "g.json", gpu_with(num_sms="132")), "field num_sms must be an integer, got '132'"),
    ("--gpu", lambda t: spec_file(t, "g.json", gpu_with(num_sms=132.5)), "field num_sms must be an integer, got 132.5"),
    ("--gpu", lambda t: spec_file(t, "g.json", gpu_with(num_sms=10)), "10 SMs cannot be split"),
    ("--gpu", lambda t: (t / "g.json").write_text('{"num_sms": %s}' % ("9" * 5000)) and str(t / "g.json"),
     "g.json: not valid JSON"),
    ("--model", lambda t: spec_file(t, "m.json", model_with(num_layers=32.5)), "field num_layers must be an integer, got 32.5"),
    ("--model", lambda t: spec_file(t, "m.json", model_with(num_heads=7)),
     "num_heads (7) must be a multiple of num_kv_heads (8)"),
    ("--model", lambda t: spec_file(t, "m.json", model_with(num_layers=True)), "field num_layers must be an integer"),
    ("--model", lambda t: spec_file(t, "m.json", {"name": "x"}), "missing ModelSpec field(s): num_layers"),
])
def test_spec_file_errors(trace_file, tmp_path, capsys, flag, make, message):
    # --calibration analytical: the shipped calibration would otherwise catch some shapes first
    assert sim_main(["--trace", str(trace_file), "--quiet", "--calibration", "analytical", flag, make(tmp_path)]) == 2
    assert message in one_error_line(capsys)


def test_spec_files_of_the_presets_load_back(tmp_path):
    for name, spec in MODELS.items():
        assert resolve_model(spec_file(tmp_path, f"{name}.json", asdict(spec))) == spec
    for name, spec in GPUS.items():
        assert resolve_gpu(spec_file(tmp_path, f"{name}.json", asdict(spec))) == spec
    # JSON writes 80 GiB as 85899345920 or as 8.589934592e10; both are an integer of bytes
    assert resolve_gpu(spec_file(tmp_path, "e.json", gpu_with(memory_bytes=8.589934592e10))) == GPUS["h100-sxm"]


@pytest.mark.parametrize("field, value, message", [
    ("prompt_tokens", "9" * 400, "field 'prompt_tokens': must be at most 1,000,000,000 tokens, got an integer of 400 digits"),
    ("prompt_tokens", "9" * 5000, "field 'prompt_tokens': must be at most 1,000,000,000 tokens, got an integer of 5000 digits"),
    ("output_tokens", "1" + "0" * 12, "field 'output_tokens': must be at most 1,000,000,000 tokens"),
    ("arrival_time_s", "9" * 400, "field 'arrival_time_s': must be below 2**53 microseconds"),
    ("arrival_time_s", "1e300", "field 'arrival_time_s': must be below 2**53 microseconds (9.0e9 s, 285 years)"),
])
def test_trace_numbers_out_of_bounds(tmp_path, capsys, field, value, message):
    line = {"request_id": 1, "arrival_time_s": 0, "prompt_tokens": 5, "output_tokens": 3}
    text = json.dumps(line).replace(f'"{field}": {json.dumps(line[field])}', f'"{field}": {value}')
    path = tmp_path / "big.jsonl"
    path.write_text('{"request_id": 0, "arrival_time_s": 0, "prompt_tokens": 5, "output_tokens": 3}\n' + text + "\n")
    assert trace_main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"big.jsonl:2: {message}" in err


def test_arrivals_re_timed_past_the_bound_are_refused():
    with pytest.raises(UserError, match="must be below 2"):
        load_entries(make_trace(3, 1.0, (5, 6), (2, 3)), rate_scale=1e-300)


def test_long_integer_request_ids_keep_their_digits(tmp_path):
    path = tmp_path / "ids.jsonl"
    path.write_text('{"request_id": %s, "arrival_time_s": 0, "prompt_tokens": 5, "output_tokens": 3}\n' % ("7" * 30))
    assert read_trace(path)[0].request_id == "7" * 30


def test_byte_order_mark_is_accepted(tmp_path, trace_file):
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + trace_file.read_bytes())
    assert read_trace(bom) == read_trace(trace_file)
    csv = tmp_path / "bom.csv"
    csv.write_bytes(b"\xef\xbb\xbfarrived_at,num_prefill_tokens,num_decode_tokens\n0,10,5\n1.5,20,6\n")
    assert [(e.arrival_time_s, e.prompt_tokens) for e in read_vidur_csv(csv)] == [(0.0, 10), (1.5, 20)]


def test_a_folder_as_trace(tmp_path, capsys):
    assert sim_main(["--trace", str(tmp_path), "--quiet"]) == 2
    assert "is a folder, not a trace file" in one_error_line(capsys)


@pytest.mark.parametrize("make, message", [
    (lambda t: (t / "f").write_text("x") and t / "f", "exists and is not a folder"),
    (lambda t: "/dev/null", "--out /dev/null: exists and is not a folder"),
    (lambda t: (t / "f").write_text("x") and t / "f" / "sub", "is not a folder"),
    (lambda t: (t / "mine").mkdir() or (t / "mine" / "notes.txt").write_text("x") and t / "mine",
     "a folder holding other files"),
    (lambda t: "/proc/nexus-out", "--out /proc/nexus-out: cannot write in /proc"),
])
def test_out_is_checked_before_any_work(trace_file, tmp_path, capsys, monkeypatch, make, message):
    import sim.cli
    ran = []
    monkeypatch.setattr(sim.cli, "run", lambda *a, **k: ran.append(1))
    assert sim_main(["--trace", str(trace_file), "--quiet", "--out", str(make(tmp_path))]) == 2
    assert message in one_error_line(capsys)
    assert not ran


def test_error_is_one_line_when_stderr_is_a_pipe(tmp_path):
    # rich wrapped errors at 80 columns when stderr was not a terminal
    nan = tmp_path / "a-rather-long-file-name-so-that-the-message-passes-eighty-columns-nan.jsonl"
    nan.write_text('{"request_id": 1, "arrival_time_s": NaN, "prompt_tokens": 5, "output_tokens": 3}\n')
    proc = subprocess.run([sys.executable, "-m", "sim.cli", "--trace", str(nan)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and len(proc.stderr) > 80, proc.stderr
    assert "field 'arrival_time_s': must be a finite number of seconds, got NaN" in proc.stderr


class FixedPairs(Policy):
    """Like the README's custom policy: fixed splits written for a 132-SM GPU."""
    name = "fixed-pairs"
    streams = ("prefill", "decode")

    def __init__(self, sizes=(48, 96)):
        self.sizes = list(sizes)

    def splits(self, gpu):
        return self.sizes

    def split(self, state):
        if not len(state.running):
            return Split()
        return Split(96, 36) if len(state.waiting) >= 2 else Split(48, 84)

    def plan(self, state, stream):
        if stream == "prefill":
            chunks = take_prefill_chunks(state, 2048)
            return Batch(stream, prefill=chunks, split=self.split(state)) if chunks else None
        return decode_step(state, stream, self.split(state))


def test_custom_policy_split_the_gpu_cannot_give_is_refused():
    trace = make_trace(60, 200.0, (200, 2000), (20, 60))
    assert sim.run(trace, policy=FixedPairs(), gpu="h100-sxm").summary["requests"] == 60
    with pytest.raises(UserError, match="fixed-pairs' chose a split the GPU cannot give: split 96:36 asks for "
                                        "132 SMs; a100-80gb has 108"):
        sim.run(trace, policy=FixedPairs(), gpu="a100-80gb")


def test_custom_policy_listing_a_partition_the_gpu_cannot_give_is_refused_up_front():
    with pytest.raises(UserError, match="lists a prefill partition of 50 SMs, which h100-sxm cannot give"):
        sim.run(make_trace(3, 1.0, (5, 6), (2, 3)), policy=FixedPairs((48, 50)), gpu="h100-sxm")
