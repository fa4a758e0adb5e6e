"""The README's promises: its policy example runs, and its two commands match CI."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_policy_example_runs_and_finishes_every_request(monkeypatch):
    block = README.split("## Writing a policy", 1)[1]
    code = re.search(r"```python\n(.*?)```", block, re.S).group(1)
    code = code.replace('sim.run("traces/sharegpt.jsonl"', 'sim.run(str(ROOT / "traces/sharegpt.jsonl")')
    namespace = {"ROOT": ROOT}
    exec(compile(code, "README.md", "exec"), namespace)
    result = namespace["result"]
    assert result.policy == "queue-aware"
    df = result.requests
    assert (df["generated_tokens"] == df["output_tokens"]).all() and len(df) == 1000
    used = set(result.timeline.loc[result.timeline["stream"] == "prefill", "sms"])
    assert used <= {0, 48, 96} and used & {48, 96}


def test_ci_runs_the_readme_test_command():
    commands = re.search(r"```sh\n(.*?)```", README, re.S).group(1).splitlines()
    test_command = commands[1].split("#")[0].strip()
    assert test_command.endswith("pytest -q")
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pip install -q torch==2.13.0" in ci and "-e '.[real,dev]'" in ci and "pytest -q" in ci
