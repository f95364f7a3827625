"""End to end on real images: smoke batch through papermill, tables, figures, book build.

One module-scoped batch serves every test here because each papermill run starts a kernel.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import nbformat
import pandas as pd
import pytest

from msdgcn.batch import run_batch
from msdgcn.metrics import evaluate_csv
from msdgcn.report import build_report

pytestmark = pytest.mark.slow

SMOKE_VARIANTS = ("gap", "a", "e")


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory, coco_subset_dir):
    results = tmp_path_factory.mktemp("results")
    outcomes = run_batch("smoke", "coco-subset", coco_subset_dir, results_root=results, jobs=2)
    return results, outcomes


def test_batch_runs_every_variant(smoke_results):
    results, outcomes = smoke_results
    assert [(o.variant, o.status) for o in outcomes] == [(v, "done") for v in SMOKE_VARIANTS]
    for variant in SMOKE_VARIANTS:
        run_dir = results / "smoke" / "coco-subset" / variant
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert metrics["variant"] == variant
        assert set(metrics["table3"]) == {"mAP", "CF1", "OF1", "batch_time", "average_loss", "best_epoch"}
        assert 0 <= metrics["metrics"]["mAP"] <= 1
        assert metrics["class_names"][:2] == ["person", "bicycle"]
        assert metrics["provenance"]["seed"] == 0
        assert metrics["provenance"]["val_data"]["images"] == 8
        assert metrics["config"]["concurrent_runs"] == 2
        notebook = nbformat.read(run_dir / "train_variant.ipynb", as_version=4)
        assert notebook.cells[0].source.startswith(f"# Run: variant {variant} (smoke, coco-subset)")
        assert any("injected-parameters" in cell.metadata.get("tags", []) for cell in notebook.cells)


def test_saved_predictions_reproduce_metrics(smoke_results):
    results, _ = smoke_results
    run_dir = results / "smoke" / "coco-subset" / "e"
    recomputed = evaluate_csv(run_dir / "predictions.csv", run_dir / "labels.csv")
    stored = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    # predictions.csv keeps 6 significant digits, so AP may move only where scores were that close.
    assert recomputed["mAP"] == pytest.approx(stored["mAP"], abs=1e-3)
    assert recomputed["OF1"] == pytest.approx(stored["OF1"], abs=1e-9)


def test_rerun_skips_finished_variants(smoke_results, coco_subset_dir):
    results, _ = smoke_results
    outcomes = run_batch("smoke", "coco-subset", coco_subset_dir, results_root=results, variants=["a"])
    assert [(o.variant, o.status) for o in outcomes] == [("a", "skipped")]


def test_rerun_with_other_parameters_rejected(smoke_results, coco_subset_dir):
    results, _ = smoke_results
    with pytest.raises(ValueError, match="epochs: 1 -> 2") as error:
        run_batch(
            "smoke", "coco-subset", coco_subset_dir, results_root=results, variants=["a"], overrides={"epochs": 2}
        )
    assert "--force" in str(error.value)
    outcomes = run_batch(
        "smoke", "coco-subset", coco_subset_dir, results_root=results, variants=["a"], overrides={"threads": 1}
    )
    assert [(o.variant, o.status) for o in outcomes] == [("a", "skipped")]


def test_failed_variant_does_not_stop_batch(tmp_path, coco_subset_dir):
    command = [
        sys.executable, "-m", "msdgcn", "batch", "--profile", "smoke", "--dataset", "coco-subset",
        "--data-root", str(coco_subset_dir), "--results", str(tmp_path), "--variants", "gap",
        "--init-weights", str(tmp_path / "missing.pt"),
    ]  # fmt: skip
    finished = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 1
    assert "1 of 1 variants failed: gap" in finished.stdout
    assert "missing.pt" in finished.stdout
    assert (tmp_path / "smoke" / "coco-subset" / "gap" / "train_variant.ipynb").exists()
    assert not (tmp_path / "smoke" / "coco-subset" / "gap" / "metrics.json").exists()


@pytest.fixture(scope="module")
def report(smoke_results):
    results, _ = smoke_results
    build_report("smoke", results_root=results)
    return results


def test_tables_hold_measured_and_missing_rows(report):
    table3 = pd.read_csv(report / "smoke" / "tables" / "table3_coco-subset.csv", index_col="row")
    assert list(table3.index) == ["a", "b", "c", "d", "e"]
    assert table3.loc["b", "our mAP"] == "not run"
    metrics = json.loads((report / "smoke" / "coco-subset" / "e" / "metrics.json").read_text())
    assert float(table3.loc["e", "our mAP"]) == round(100 * metrics["table3"]["mAP"], 1)
    assert float(table3.loc["e", "paper mAP"]) == 87.1
    table1 = pd.read_csv(report / "smoke" / "tables" / "table1_coco-subset.csv", index_col="method")
    assert float(table1.loc["ADD-GCN", "all mAP"]) == 84.2
    ours = "ours: ADD-GCN, resnet18, random init (a)"
    assert table1.loc[ours, "source"] == "measured: smoke profile, coco-subset"
    assert table1.loc[ours, "scale"].startswith("resnet18, 64 px, 1 epochs, 12 training images, seed 0")


def test_figures_written(report):
    for name in ("leaky_relu_gelu.png", "gelu_approximations.png", "bce_with_logits.png"):
        assert (report / "figures" / name).stat().st_size > 10_000


def test_book_builds_with_runs(report, repo_root, tmp_path):
    book = tmp_path / "book_source"
    book.mkdir()
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy(repo_root / name, book / name)
    shutil.copytree(repo_root / "book", book / "book", ignore=shutil.ignore_patterns("_build"))
    shutil.copytree(repo_root / "benchmarks" / "results", book / "benchmarks" / "results")
    shutil.copytree(report, book / "results")
    jupyter_book = shutil.which("jupyter-book", path=str(repo_root / ".venv" / "bin")) or "jupyter-book"
    finished = subprocess.run(
        [jupyter_book, "build", str(book), "--path-output", str(book)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    html = book / "_build" / "html"
    for variant in SMOKE_VARIANTS:
        page = (html / "results" / "smoke" / "coco-subset" / variant / "train_variant.html").read_text()
        assert f"Run: variant {variant} (smoke, coco-subset)" in page
    tables_page = (html / "results" / "smoke" / "tables.html").read_text()
    assert "not run" in tables_page
    assert "87.1" in tables_page
    assert (html / "results" / "figures" / "figures.html").exists()
    assert (html / "book" / "method.html").exists()
    assert "images_per_second" in (html / "book" / "benchmarks.html").read_text()


def test_result_notebooks_written(report):
    for notebook in ("per_class.ipynb", "attention.ipynb"):
        executed = nbformat.read(report / "smoke" / notebook, as_version=4)
        assert any("injected-parameters" in cell.metadata.get("tags", []) for cell in executed.cells)
    assert (report / "smoke" / "per_class" / "training_curves.png").stat().st_size > 10_000
    assert list((report / "smoke" / "attention").glob("adjacency_*.png"))
