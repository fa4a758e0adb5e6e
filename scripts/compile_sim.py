"""Compile the simulator's hottest modules with mypyc, in place, for long sweeps.

    pip install -e '.[compiled]'          # mypyc; a C compiler must be on the machine
    python scripts/compile_sim.py         # build the extension modules beside their sources
    python scripts/compile_sim.py --clean # remove them: the sources run as before

Python imports a built extension in preference to the .py beside it, so after a build every
run from this tree uses it. The event loop's cost is interpretation spread over every step
(no function's own share is large), so it is the interpreter's work per step that compiling
removes. Compiling the modules below takes 36-42% of the loop's instructions away (callgrind,
first 5,000 ShareGPT requests, a request: chunked 165k -> 96.9k, prefill-first 205k -> 119.4k,
static 292.6k -> 174.2k, nexus 359.6k -> 209.5k, nexus-slo 301.8k -> 193.0k, disagg 341k ->
208.7k). The cost model and the helpers it calls (nexus.cost.*, nexus.graph_buckets) were the
last large share left to the interpreter: with them compiled, nexus went from 256.6k to 209.5k
and static from 202.2k to 174.2k. The compiled code does
the same float operations in the same order, so every result is the same to the last bit
(tests/test_sim_compiled.py checks every policy against the sources).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Modules that mypyc compiles as they are, chosen by the loop's instructions they hold. Left
# out: nexus.policy.base (a compiled class cannot be subclassed by an interpreted one, and
# every policy subclasses Policy), sim.engine (a test subclasses it), and modules that do not
# yet type-check as strictly as mypyc needs. A compiled module's typed arguments must be of
# their exact types (a numpy integer is not an int), which is why the cost model's public calls
# keep accepting `int | np.ndarray` SM counts.
MODULES = ["sim/clock.py", "sim/gpu.py", "nexus/running.py", "nexus/waiting.py", "nexus/kv.py",
           "nexus/topology.py", "nexus/policy/split_controller.py", "nexus/step.py", "nexus/state.py",
           "nexus/cost/measured.py", "nexus/cost/terms.py", "nexus/graph_buckets.py", "nexus/cost/roofline.py",
           "nexus/cost/base.py"]


def built() -> list[Path]:
    """The extension modules a build left in the tree, from this list or an earlier one (the
    packages hold no others; mypyc adds one shared runtime module at the root)."""
    return sorted([*(ROOT / "sim").rglob("*.so"), *(ROOT / "nexus").rglob("*.so"), *ROOT.glob("*__mypyc.*.so")])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clean", action="store_true", help="remove the built modules")
    args = ap.parse_args()
    for path in built():
        path.unlink()
    if args.clean:
        return 0
    try:
        import mypyc  # noqa: F401
    except ImportError:
        print("compile_sim: mypyc is not installed: pip install -e '.[compiled]'", file=sys.stderr)
        return 2
    proc = subprocess.run([sys.executable, "-m", "mypyc", *MODULES], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        print(proc.stdout[-4000:] + proc.stderr[-4000:], file=sys.stderr)
        print("compile_sim: the build failed (above); the sources still run as they are", file=sys.stderr)
        return 1
    print(f"compile_sim: built {len(built())} modules; `--clean` removes them")
    return 0


if __name__ == "__main__":
    sys.exit(main())
