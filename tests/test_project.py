"""Project files agree with each other: packages, notebook pairs, README commands."""

from __future__ import annotations

import re
import tomllib

import jupytext
import nbformat
import pytest
import yaml


def test_environment_matches_pyproject(repo_root):
    pyproject = tomllib.loads((repo_root / "pyproject.toml").read_text())
    environment = yaml.safe_load((repo_root / "environment.yml").read_text())
    pip_section = next(item["pip"] for item in environment["dependencies"] if isinstance(item, dict))
    packages = [entry for entry in pip_section if entry != "-e ."]
    assert packages == pyproject["project"]["dependencies"]


def test_required_packages_listed(repo_root):
    dependencies = tomllib.loads((repo_root / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[<>=!\[ ]", entry, maxsplit=1)[0].lower() for entry in dependencies}
    required = {"torch", "torchvision", "timm", "jupyter", "jupytext", "papermill", "matplotlib", "seaborn", "pycocotools", "jupyter-book"}
    assert required <= names


def notebook_sources(repo_root):
    return sorted((repo_root / "notebooks").glob("*.py"))


def test_notebooks_exist(repo_root):
    names = {path.stem for path in notebook_sources(repo_root)}
    assert {"train_variant", "tables", "figures"} <= names


@pytest.mark.parametrize("name", ["train_variant", "tables", "figures"])
def test_notebook_pair_in_sync(repo_root, name):
    source = jupytext.read(repo_root / "notebooks" / f"{name}.py")
    paired = nbformat.read(repo_root / "notebooks" / f"{name}.ipynb", as_version=4)
    assert [c.cell_type for c in source.cells] == [c.cell_type for c in paired.cells], (
        f"notebooks/{name}.ipynb differs from {name}.py; run `jupytext --sync notebooks/{name}.py`"
    )
    for source_cell, paired_cell in zip(source.cells, paired.cells):
        assert source_cell.source == paired_cell.source
    for cell in paired.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], f"notebooks/{name}.ipynb has committed outputs"


@pytest.mark.parametrize("name", ["train_variant", "tables", "figures"])
def test_notebook_has_one_parameters_cell(repo_root, name):
    source = jupytext.read(repo_root / "notebooks" / f"{name}.py")
    tagged = [cell for cell in source.cells if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1
    assert source.cells[0].cell_type == "markdown"
    assert source.cells[0].source.startswith("# ")


def test_readme_commands_exist(repo_root):
    readme = (repo_root / "README.md").read_text()
    assert "bash scripts/main_job.sh" in readme
    assert "bash scripts/test.sh" in readme
    assert (repo_root / "scripts" / "main_job.sh").exists()
    assert "scripts/test.sh" in (repo_root / ".ci" / "run").read_text()


def test_book_pins_jupyter_book_below_2(repo_root):
    dependencies = tomllib.loads((repo_root / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(entry.startswith("jupyter-book") and "<2" in entry for entry in dependencies)
    toc = yaml.safe_load((repo_root / "_toc.yml").read_text())
    assert toc["format"] == "jb-book"
