"""Every notebook in notebooks/ runs top to bottom in a fresh kernel, offline, and shows what it
promises: a figure and an audio player."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


def _outputs(notebook) -> list[dict]:
    return [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs]


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, work_home, tmp_path):
    notebook = nbformat.read(path, as_version=4)
    # The kernel inherits this process's environment: offline hub and W&B, temporary homes.
    client = NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()
    outputs = _outputs(notebook)
    assert not [o for o in outputs if o.output_type == "error"]
    html = [o.data.get("text/html", "") for o in outputs if "data" in o]
    assert any("<audio" in text for text in html), "no audio player in the outputs"
    assert any("image/png" in o.get("data", {}) for o in outputs), "no figure in the outputs"
    assert list((work_home / "runs").glob("*/checkpoints/last.ckpt"))
    # setup_logging() in the first cell: the command line's quiet output, no library chatter
    printed = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "GPU available:" not in printed and "Tip:" not in printed


def test_notebooks_are_stored_without_outputs():
    """Outputs belong to a run, not to the repository (and would go stale)."""
    assert NOTEBOOKS
    for path in NOTEBOOKS:
        notebook = nbformat.read(path, as_version=4)
        nbformat.validate(notebook)
        assert not _outputs(notebook), f"{path.name} holds outputs: clear them"
