"""Profiles and variants: Table 3 rows are parameter sets on top of ADD-GCN."""

from __future__ import annotations

import pytest

from msdgcn.models import ModelConfig
from msdgcn.profiles import DEFAULT_VARIANTS, PROFILES, RunConfig, resolve_run


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


def test_paper_rows_switch_one_module_each():
    rows = {v: resolved("paper", v) for v in "abcde"}
    assert rows["a"].model == {"head": "add-gcn", "backbone": "resnet101", "pretrained": "timm"}
    assert changed_fields(rows["a"], rows["b"]) == {"model.backbone": "res2net101_26w_4s"}
    assert changed_fields(rows["b"], rows["c"]) == {"model.cbam": True}
    assert changed_fields(rows["c"], rows["d"]) == {"model.activation": "gelu"}
    assert changed_fields(rows["d"], rows["e"]) == {
        "optim.optimizer": "adam",
        "optim.loss": "bce",
        "optim.lr": 1e-3,
    }


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
