"""Each notebooks/*.py source and its paired .ipynb contain the same cells and no outputs."""

from pathlib import Path

import jupytext
import nbformat
import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
SOURCES = sorted(NOTEBOOK_DIR.glob("*.py"))
PAIRED = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
PAIRING = "ipynb,py:percent"
# Metadata that papermill or a kernel writes when a notebook is executed.
EXECUTION_KEYS = ("papermill", "execution")


def _cells(notebook: nbformat.NotebookNode) -> list[tuple[str, str, tuple[str, ...]]]:
    """Return (cell type, source, tags) of each cell, the content that pairing must keep equal."""
    return [
        (cell.cell_type, cell.source.strip(), tuple(cell.metadata.get("tags", ())))
        for cell in notebook.cells
    ]


def test_notebook_folder_has_pairs():
    assert SOURCES, f"no .py notebook sources in {NOTEBOOK_DIR}"
    assert [path.stem for path in SOURCES] == [path.stem for path in PAIRED]


@pytest.mark.parametrize("source", SOURCES, ids=lambda path: path.name)
def test_notebook_pair_same_cells(source):
    paired = source.with_suffix(".ipynb")
    assert paired.is_file(), f"{paired} is missing; run: jupytext --sync {source}"
    from_source = jupytext.read(source)
    from_paired = nbformat.read(paired, as_version=4)
    assert from_source.metadata["jupytext"]["formats"] == PAIRING
    assert from_paired.metadata["jupytext"]["formats"] == PAIRING
    assert _cells(from_source) == _cells(from_paired), f"{source.name} and {paired.name} differ; run: jupytext --sync {source}"


@pytest.mark.parametrize("notebook", PAIRED, ids=lambda path: path.name)
def test_paired_notebook_without_outputs(notebook):
    content = nbformat.read(notebook, as_version=4)
    for index, cell in enumerate(content.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{notebook.name} cell {index} has outputs; clear them and run jupytext --sync"
            assert cell.execution_count is None, f"{notebook.name} cell {index} has an execution count"
    for key in EXECUTION_KEYS:
        assert key not in content.metadata, f"{notebook.name} carries {key} metadata from an execution"


@pytest.mark.parametrize("source", SOURCES, ids=lambda path: path.name)
def test_notebook_source_without_outputs(source):
    # The percent format cannot store outputs, but a source saved from an executed notebook
    # keeps papermill's injected-parameters cell and execution metadata.
    content = jupytext.read(source)
    for key in EXECUTION_KEYS:
        assert key not in content.metadata, f"{source.name} carries {key} metadata from an execution"
    for index, cell in enumerate(content.cells):
        assert "injected-parameters" not in cell.metadata.get("tags", ()), f"{source.name} cell {index} was injected by papermill"
        for key in EXECUTION_KEYS:
            assert key not in cell.metadata, f"{source.name} cell {index} carries {key} metadata"
