"""Execute the result notebooks so the book shows them with their outputs.

The executed copies live with the results they show: `results/<profile>/tables.ipynb`,
`results/<profile>/per_class.ipynb`, `results/<profile>/attention.ipynb`,
`results/figures/figures.ipynb` and `results/discrepancies/discrepancies.ipynb`; the PNG figures of the per-class and attention notebooks go to
`results/<profile>/per_class/` and `results/<profile>/attention/`. The book renders those copies
and never re-executes them.

The attention notebook needs a trained checkpoint. Checkpoints are not in git, so on a fresh
clone the report skips that notebook and logs the command that trains the checkpoint.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import papermill

from .attention import train_command_for
from .batch import NOTEBOOK_DIR, REPO_ROOT, read_notebook, tidy_executed
from .profiles import PROFILES
from .run import METRICS_FILE

logger = logging.getLogger(__name__)

# The run whose per-class AP and attention maps the report shows for each profile: the paper's
# model (Table 3 row e). The cpu profile shows head-e instead (GELU, Adam and BCEWithLogitsLoss
# on EfficientNet-Lite0), because only its head-check rows start from ImageNet weights.
FOCUS_VARIANTS = {"paper": "e", "cpu": "head-e", "smoke": "e"}


@dataclass
class NotebookJob:
    """One notebook to execute: its jupytext source, the executed copy, its parameters, a title."""

    notebook: str
    output: Path
    parameters: dict
    title: str | None = None


def execute(notebook: str, output: Path, parameters: dict, title: str | None = None) -> Path:
    output.parent.mkdir(parents=True, exist_ok=True)
    logger.info("executing %s into %s", notebook, output)
    papermill.execute_notebook(
        read_notebook(NOTEBOOK_DIR / notebook),
        str(output),
        parameters=parameters,
        cwd=str(NOTEBOOK_DIR),
        progress_bar=False,
    )
    tidy_executed(output, title)
    return output


def _from_notebooks(path: Path) -> str:
    """Return `path` relative to the notebooks folder, the working directory of every kernel."""
    return os.path.relpath(path, NOTEBOOK_DIR)


def plan_report(
    profile: str,
    results_root: str | Path = REPO_ROOT / "results",
    dataset: str = "coco-subset",
    voc_dataset: str = "coco-subset-voc20",
) -> list[NotebookJob]:
    """List the notebooks the report executes for a profile, and log each one it skips.

    The per-class notebook needs the finished focus run (`FOCUS_VARIANTS`), and the attention
    notebook needs that run's `checkpoints/best.pt` as well.
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {sorted(PROFILES)}")
    results_root = Path(results_root).resolve()
    profile_dir = results_root / profile
    jobs = [
        NotebookJob(
            "tables.py",
            profile_dir / "tables.ipynb",
            dict(profile=profile, dataset=dataset, voc_dataset=voc_dataset, results_root=_from_notebooks(results_root)),
        ),
        NotebookJob(
            "figures.py",
            results_root / "figures" / "figures.ipynb",
            dict(output_dir=_from_notebooks(results_root / "figures")),
        ),
    ]

    variant = FOCUS_VARIANTS.get(profile, "e")
    run_dir = profile_dir / dataset / variant
    if not (run_dir / METRICS_FILE).is_file():
        logger.info(
            "skipping the per-class and attention notebooks: %s has no finished run (no %s). "
            "Run `python -m msdgcn batch --profile %s --dataset %s --data-root DIR` first",
            run_dir, METRICS_FILE, profile, dataset,
        )  # fmt: skip
        return jobs
    jobs.append(
        NotebookJob(
            "per_class.py",
            profile_dir / "per_class.ipynb",
            dict(
                profile=profile,
                dataset=dataset,
                variant=variant,
                results_root=_from_notebooks(results_root),
                output_dir=_from_notebooks(profile_dir / "per_class"),
            ),
            title=f"Per-class results ({profile} profile, {dataset})",
        )
    )

    checkpoint = run_dir / "checkpoints" / "best.pt"
    if not checkpoint.is_file():
        logger.info(
            "skipping the attention notebook: %s not found (checkpoints are not in git). Train it "
            "with `%s`, or with `bash scripts/main_job.sh --force` for the cpu profile",
            checkpoint, train_command_for(checkpoint),
        )  # fmt: skip
        return jobs
    jobs.append(
        NotebookJob(
            "attention.py",
            profile_dir / "attention.ipynb",
            dict(checkpoint=_from_notebooks(checkpoint), output_dir=_from_notebooks(profile_dir / "attention")),
            title=f"Attention maps and graphs ({profile} profile, {dataset}, variant {variant})",
        )
    )
    return jobs


def build_report(
    profile: str,
    results_root: str | Path = REPO_ROOT / "results",
    dataset: str = "coco-subset",
    voc_dataset: str = "coco-subset-voc20",
) -> list[Path]:
    """Execute the notebooks of `plan_report` and the discrepancies notebook; return the
    executed copies' paths."""
    jobs = plan_report(profile, results_root, dataset, voc_dataset)
    written = [execute(job.notebook, job.output, job.parameters, job.title) for job in jobs]
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
