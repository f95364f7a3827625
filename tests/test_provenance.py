"""Provenance: the code version and whether code, not results, had uncommitted changes."""

from __future__ import annotations

import subprocess

import numpy as np

from msdgcn.provenance import dataset_fingerprint, git_state


def git(repo, *args):
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def test_dirty_counts_code_not_results(tmp_path):
    git(tmp_path, "init", "-q")
    (tmp_path / "src").mkdir()
    (tmp_path / "results").mkdir()
    (tmp_path / "src" / "code.py").write_text("x = 1\n")
    (tmp_path / "results" / "metrics.json").write_text("{}\n")
    git(tmp_path, "add", "-A")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "-qm", "start")

    state = git_state(tmp_path / "src")
    assert len(state["commit"]) == 40
    assert state["dirty"] is False

    (tmp_path / "results" / "metrics.json").unlink()
    assert git_state(tmp_path / "src")["dirty"] is False

    (tmp_path / "README.md").write_text("changed\n")
    git(tmp_path, "add", "README.md")
    assert git_state(tmp_path / "src")["dirty"] is True
    git(tmp_path, "rm", "-q", "--cached", "README.md")
    (tmp_path / "README.md").unlink()

    (tmp_path / "src" / "code.py").write_text("x = 2\n")
    assert git_state(tmp_path / "src")["dirty"] is True


def test_git_state_outside_repository(tmp_path):
    assert git_state(tmp_path) == {"commit": None, "dirty": None}


def test_fingerprint_changes_with_labels():
    targets = np.array([[1, 0], [0, 1]], dtype=np.int8)
    first = dataset_fingerprint(["1", "2"], targets, ["a", "b"])
    assert first["images"] == 2
    assert first == dataset_fingerprint(["1", "2"], targets.copy(), ["a", "b"])
    changed = targets.copy()
    changed[0, 1] = 1
    assert dataset_fingerprint(["1", "2"], changed, ["a", "b"])["sha256"] != first["sha256"]
    assert dataset_fingerprint(["2", "1"], targets, ["a", "b"])["sha256"] != first["sha256"]
