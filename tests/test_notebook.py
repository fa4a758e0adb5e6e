"""Execute notebooks/policy_exploration.ipynb top to bottom on the current interpreter."""
import json
import sys
from pathlib import Path

import nbclient
import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "policy_exploration.ipynb"


def _text(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream":
            parts.append(out["text"])
        elif "data" in out:
            parts.append(out["data"].get("text/plain", ""))
    return "".join(parts)


def _tagged(nb, tag: str):
    cells = [c for c in nb.cells if tag in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"expected one cell tagged {tag!r}"
    return cells[0]


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    # A kernel spec of our own, pointing at this interpreter: a "python3" kernel registered
    # elsewhere on the machine may be another Python without the project installed.
    tmp = tmp_path_factory.mktemp("kernel")
    spec = tmp / "kernels" / "nexus-notebook-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "nexus notebook test", "language": "python"}))
    ksm = KernelSpecManager(kernel_dirs=[str(tmp / "kernels")])
    km = KernelManager(kernel_name="nexus-notebook-test", kernel_spec_manager=ksm,
                       connection_file=str(tmp / "connection.json"))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, km=km, timeout=120, allow_errors=True,
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()
    return nb


def test_notebook_is_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


def test_no_cell_errors(executed):
    code = [c for c in executed.cells if c.cell_type == "code"]
    assert code and all(c.execution_count is not None for c in code)
    for cell in code:
        errors = [o for o in cell.outputs if o.get("output_type") == "error"]
        assert not errors, f"{errors[0]['ename']}: {errors[0]['evalue']}\nin cell:\n{cell.source}"


def test_custom_policy_finishes_every_request(executed):
    text = _text(_tagged(executed, "custom-policy"))
    assert "queue-aware: 300/300 requests finished with all their tokens" in text


def test_figures_are_rendered(executed):
    pngs = [o for c in executed.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(pngs) >= 5   # CDFs, two split timelines, custom CDFs, alpha/beta heatmap


def test_alpha_beta_grid_covers_every_pair(executed):
    text = _text(_tagged(executed, "alpha-beta-grid"))
    rows = [line for line in text.splitlines()[1:] if line.strip()]
    assert len(rows) == 12   # 3 alphas x 4 betas, one DataFrame row each
