"""Execute the tables, figures and discrepancies notebooks so the book shows their outputs.

The executed copies live with the results they show: `results/<profile>/tables.ipynb`,
`results/figures/figures.ipynb` and `results/discrepancies/discrepancies.ipynb`. The book
renders those copies and never re-executes them.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import papermill

from .batch import NOTEBOOK_DIR, REPO_ROOT, read_notebook, tidy_executed

logger = logging.getLogger(__name__)


def execute(notebook: str, output: Path, parameters: dict) -> Path:
    output.parent.mkdir(parents=True, exist_ok=True)
    logger.info("executing %s into %s", notebook, output)
    papermill.execute_notebook(
        read_notebook(NOTEBOOK_DIR / notebook),
        str(output),
        parameters=parameters,
        cwd=str(NOTEBOOK_DIR),
        progress_bar=False,
    )
    tidy_executed(output)
    return output


def build_report(
    profile: str,
    results_root: str | Path = REPO_ROOT / "results",
    dataset: str = "coco-subset",
    voc_dataset: str = "coco-subset-voc20",
) -> list[Path]:
    """Execute the tables notebook for a profile, the figures and the discrepancies notebooks.

    Returns the paths of the executed notebooks.
    """
    results_root = Path(results_root).resolve()
    written = [
        execute(
            "tables.py",
            results_root / profile / "tables.ipynb",
            dict(
                profile=profile,
                dataset=dataset,
                voc_dataset=voc_dataset,
                results_root=os.path.relpath(results_root, NOTEBOOK_DIR),
            ),
        ),
        execute(
            "figures.py",
            results_root / "figures" / "figures.ipynb",
            dict(output_dir=os.path.relpath(results_root / "figures", NOTEBOOK_DIR)),
        ),
    ]
    written.extend(build_discrepancies(results_root))
    return written


def build_discrepancies(results_root: str | Path = REPO_ROOT / "results") -> list[Path]:
    """Execute the discrepancies notebook into `results/discrepancies/`; return its path.

    The notebook reads published files under the shared data folder (MSDGCN_SHARED, or
    `shared/` next to the repository). Without that folder it is skipped with a warning, and
    the book keeps the committed copy.
    """
    shared_dir = Path(os.environ.get("MSDGCN_SHARED", REPO_ROOT.parent / "shared")).resolve()
    if not (shared_dir / "data").is_dir():
        logger.warning("discrepancies notebook skipped: no data/ folder in %s; set MSDGCN_SHARED", shared_dir)
        return []
    output = Path(results_root).resolve() / "discrepancies" / "discrepancies.ipynb"
    return [execute("discrepancies.py", output, dict(shared_dir=os.path.relpath(shared_dir, NOTEBOOK_DIR)))]
