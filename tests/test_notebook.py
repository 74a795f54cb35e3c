"""examples/deep_dive.ipynb runs top to bottom (nbclient, a real IPython kernel).

The kernel is this interpreter (`sys.executable`, so this venv's sdlab), through a kernel
spec written for the test and put first on JUPYTER_PATH: no `ipykernel install` step, and
no other `python3` kernel spec on the machine can stand in for it. The notebook uses the
bundled model when it is installed and a tiny random-weight model otherwise.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import ipykernel  # noqa: F401 - the kernel must be importable (a test extra)
import nbclient
import nbformat
import pytest

NOTEBOOK = Path(__file__).resolve().parent.parent / "examples" / "deep_dive.ipynb"
KERNEL = "python3"
BUDGET_S = 600  # the notebook takes ~1-3 min on 2 busy cores; this only catches a blow-up


def _kernel_spec(root: Path) -> Path:
    """A `python3` kernel spec that runs this interpreter; returns the JUPYTER_PATH entry."""
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (sdlab tests)",
        "language": "python",
    }))
    return root


def _text(output: dict) -> str:
    if output.get("output_type") == "stream":
        return output.get("text", "")
    return output.get("data", {}).get("text/plain", "")


def test_committed_without_outputs() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)
    assert 'MODEL = "sdlab-tiny"' in code[0].source


def test_notebook_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    jupyter = _kernel_spec(tmp_path / "jupyter")
    monkeypatch.setenv("JUPYTER_PATH", os.pathsep.join(
        [str(jupyter), *filter(None, [os.environ.get("JUPYTER_PATH")])]))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",  # tiny models: one thread is as fast and does not thrash
        "MKL_NUM_THREADS": "1",
        "IPYTHONDIR": str(tmp_path / "ipython"),  # no user profile or startup files
        "MPLCONFIGDIR": str(tmp_path / "mpl"),
        "SDLAB_CACHE": str(tmp_path / "cache"),
    }
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name=KERNEL, timeout=BUDGET_S,
                                     resources={"metadata": {"path": str(run_dir)}})
    began = time.monotonic()
    client.execute(env=env)  # raises CellExecutionError on the first failing cell
    elapsed = time.monotonic() - began
    print(f"deep_dive.ipynb ran in {elapsed:.0f} s")
    assert elapsed < BUDGET_S

    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code), "a code cell did not run"
    outputs = [o for c in code for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(_text(o) for o in outputs)
    # the notebook's own checks ran (an assert that fails raises above) and printed
    assert "hand-written loop == generate(): True" in text
    assert "by-hand encoder vs text encoder: max |diff|" in text
    assert "14.6146 9.6826 6.6780" in text
    assert "mean blue" in text and "loss at steps" in text
    # pictures, plots and the progression video are shown inline
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pngs) >= 15, len(pngs)
    videos = [o for o in outputs if "<video" in o.get("data", {}).get("text/html", "")]
    assert len(videos) == 1
