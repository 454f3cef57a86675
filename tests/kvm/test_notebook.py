"""examples/tour.ipynb runs top to bottom (nbclient, a python3 kernel) and shows what it should."""
import os
import pathlib

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent
CELL_TIMEOUT = 180


def outputs(nb, mime):
    return [out["data"][mime] for cell in nb.cells if cell.cell_type == "code"
            for out in cell.get("outputs", ()) if mime in out.get("data", {})]


def test_tour_notebook_runs(state_dir, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(ROOT / "examples" / "tour.ipynb", as_version=4)
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                                     resources={"metadata": {"path": str(ROOT / "examples")}})
    client.execute()  # raises CellExecutionError with the cell and its traceback
    html = outputs(nb, "text/html")
    assert any('class="xvm-capabilities"' in h for h in html)
    host_tables = [h for h in html if 'class="xvm-host"' in h]
    assert host_tables and all(f"tour-busy{i}" in host_tables[-1] for i in range(3))
    assert any('class="xvm-domain"' in h and "echo ready" in h for h in html)
    assert any('class="xvm-pool"' in h and "web1" in h for h in html)
    assert any('class="xvm-volume"' in h and "tour/web0" in h for h in html)  # golden's clones
    assert outputs(nb, "image/png"), "the matplotlib plot was not produced"
    text = "".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code"
                   for out in cell.get("outputs", ()))
    assert "echo: hello from the notebook" in text
    assert "DomainState.PAUSED" in text and "DomainState.RUNNING" in text
    assert "skipped: " in text or "xvm-image" not in text
    assert not any(out.get("output_type") == "error" for cell in nb.cells for out in cell.get("outputs", ()))
