"""Classification heads that turn a backbone feature map X (B, D, H, W) into logits (B, C).

- `ADDGCNHead`: the head of ADD-GCN (Ye et al., "Attention-Driven Dynamic Graph Convolutional
  Network for Multi-Label Image Recognition", ECCV 2020). SAM splits X into one category
  representation per class, and D-GCN relates them through a static and a dynamic graph.
- `GlobalPoolHead`: global average (or max) pooling and one linear layer, the ResNet baseline.

Equation numbers are those of Luo and Lin's MSD-GCN paper, which restates ADD-GCN. Where that
text and the ADD-GCN reference implementation differ, the code follows the implementation and
says so in place. Every layer keeps PyTorch's default initialisation.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

ACTIVATIONS = ("leaky_relu", "gelu")
POOLINGS = ("avg", "max")
# ADD-GCN uses LeakyReLU with a negative slope of 0.2 everywhere in D-GCN.
LEAKY_RELU_SLOPE = 0.2


def make_activation(name: str) -> nn.Module:
    """Build the D-GCN activation: LeakyReLU(0.2) as in ADD-GCN, or exact (erf) GELU."""
    if name == "leaky_relu":
        return nn.LeakyReLU(LEAKY_RELU_SLOPE)
    if name == "gelu":
        return nn.GELU()
    raise ValueError(f"unknown activation {name!r}; expected one of {ACTIVATIONS}")


class SAMOutput(NamedTuple):
    representations: Tensor  # V (B, D1, C), one column per class
    activation_maps: Tensor  # class activation maps (B, C, H, W), before the sigmoid
    sam_logits: Tensor  # s_m (B, C), the spatial maximum of each map


class SemanticAttention(nn.Module):
    """SAM: decompose a feature map into content-aware category representations.

    A 1x1 convolution without bias gives one activation map per class. Its sigmoid M weights
    the transformed map X' = conv1x1(X) in eq. (1): v_c = sum over (h, w) of M_c(h, w) X'(h, w).
    Input (B, D, H, W); output `SAMOutput` with V of shape (B, D1, C).
    """

    def __init__(
        self, in_channels: int, num_classes: int, hidden_dim: int, activation: str = "leaky_relu"
    ) -> None:
        super().__init__()
        make_activation(activation)  # rejects unknown names
        self.class_conv = nn.Conv2d(in_channels, num_classes, kernel_size=1, bias=False)
        self.transform_conv = nn.Conv2d(in_channels, hidden_dim, kernel_size=1)
        # ADD-GCN applies no activation to X', so there is no LeakyReLU to replace. The MSD-GCN
        # paper puts GELU into SAM, and "gelu" adds it here.
        self.transform_activation = nn.GELU() if activation == "gelu" else nn.Identity()

    def forward(self, features: Tensor) -> SAMOutput:
        activation_maps = self.class_conv(features)
        sam_logits = activation_maps.amax(dim=(2, 3))

        attention = torch.sigmoid(activation_maps).flatten(2)  # M (B, C, HW)
        transformed = self.transform_activation(self.transform_conv(features)).flatten(2)
        representations = torch.bmm(transformed, attention.transpose(1, 2))  # eq. (1)
        return SAMOutput(representations, activation_maps, sam_logits)


class DGCNOutput(NamedTuple):
    node_features: Tensor  # Z (B, D1, C)
    dynamic_adjacency: Tensor  # A_d (B, C, C)


class DynamicGCN(nn.Module):
    """D-GCN: a static GCN, then a dynamic GCN, over the C category representations.

    Input V (B, D1, C), one column per class node. Output Z = V + dynamic_gcn(H) with
    H = V + static_gcn(V), both (B, D1, C). The second residual adds V, not H, as in the
    ADD-GCN reference implementation. With activation "gelu", GELU replaces every LeakyReLU.

    NOTE: BatchNorm1d on the global vector needs more than one image per batch in training mode.
    """

    def __init__(self, num_nodes: int, hidden_dim: int, activation: str = "leaky_relu") -> None:
        super().__init__()
        self.static_adjacency = nn.Conv1d(num_nodes, num_nodes, kernel_size=1, bias=False)  # A_s
        self.static_weight = nn.Conv1d(hidden_dim, hidden_dim, kernel_size=1)  # W_s
        self.global_conv = nn.Conv1d(hidden_dim, hidden_dim, kernel_size=1)
        self.global_norm = nn.BatchNorm1d(hidden_dim)
        self.adjacency_conv = nn.Conv1d(2 * hidden_dim, num_nodes, kernel_size=1)  # W_A
        self.dynamic_weight = nn.Conv1d(hidden_dim, hidden_dim, kernel_size=1)  # W_d
        self.activation = make_activation(activation)

    def forward_static_gcn(self, nodes: Tensor) -> Tensor:
        """Compute the static part f(f(A_s V) W_s + b_s) of H; nodes (B, D1, C) to (B, D1, C).

        The paper writes H = LReLU(A_s V W_s); `forward` adds the residual, H = V + this part.

        A_s (C, C) mixes the nodes (row i gives node i), then W_s maps the features. As in the
        ADD-GCN reference implementation, each of the two steps has its own activation.
        """
        mixed = self.activation(self.static_adjacency(nodes.transpose(1, 2)))  # (B, C, D1)
        return self.activation(self.static_weight(mixed.transpose(1, 2)))

    def forward_dynamic_adjacency(self, nodes: Tensor) -> Tensor:
        """Estimate A_d = sigmoid(W_A H') (eq. (2)) from nodes H (B, D1, C); return (B, C, C).

        A_d[i, j] is output channel i of the 1x1 convolution W_A at node j.
        """
        global_vector = nodes.mean(dim=2, keepdim=True)  # (B, D1, 1)
        global_vector = self.activation(self.global_norm(self.global_conv(global_vector)))

        # Eq. (3): H' stacks h_g on top of every h_j, with the global vector first.
        joint = torch.cat((global_vector.expand(-1, -1, nodes.shape[2]), nodes), dim=1)
        return torch.sigmoid(self.adjacency_conv(joint))

    def forward_dynamic_gcn(self, nodes: Tensor, adjacency: Tensor) -> Tensor:
        """Propagate nodes (B, D1, C) over the dynamic graph (B, C, C); return (B, D1, C)."""
        # Node j receives sum_i A_d[i, j] h_i. This is A_d^T H, the transpose of eq. (2)'s
        # A_d H, and it is what the ADD-GCN reference implementation computes.
        propagated = self.activation(torch.matmul(nodes, adjacency))
        return self.activation(self.dynamic_weight(propagated))

    def forward(self, representations: Tensor) -> DGCNOutput:
        nodes = representations + self.forward_static_gcn(representations)  # H
        adjacency = self.forward_dynamic_adjacency(nodes)
        node_features = representations + self.forward_dynamic_gcn(nodes, adjacency)  # Z
        return DGCNOutput(node_features, adjacency)


class PerClassLinear(nn.Module):
    """One linear classifier per class node: s_r[c] = w_c . z_c + b_c.

    Input Z (B, D1, C), output (B, C). This equals the diagonal of Conv1d(D1, C, 1) applied
    to Z, without computing the C x C products. Initialised like nn.Linear(D1, C).
    """

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        self.bias = nn.Parameter(torch.empty(num_classes))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        bound = 1.0 / math.sqrt(in_features)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, node_features: Tensor) -> Tensor:
        return torch.einsum("bdc,cd->bc", node_features, self.weight) + self.bias


class ADDGCNHead(nn.Module):
    """ADD-GCN head: SAM, D-GCN, then one classifier per class node.

    Input X (B, D, H, W). The logits (B, C) are (s_m + s_r) / 2, the mean of the SAM scores
    s_m and the D-GCN scores s_r.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        hidden_dim: int = 1024,
        activation: str = "leaky_relu",
    ) -> None:
        super().__init__()
        self.sam = SemanticAttention(in_channels, num_classes, hidden_dim, activation)
        self.dgcn = DynamicGCN(num_classes, hidden_dim, activation)
        self.classifier = PerClassLinear(hidden_dim, num_classes)

    # Tensors indexed by class, with the dimensions that run over classes (for reordering).
    class_dims = {
        "sam.class_conv.weight": (0,),
        "dgcn.static_adjacency.weight": (0, 1),
        "dgcn.adjacency_conv.weight": (0,),
        "dgcn.adjacency_conv.bias": (0,),
        "classifier.weight": (0,),
        "classifier.bias": (0,),
    }

    def forward(self, features: Tensor) -> Tensor:
        return self.forward_details(features)["logits"]

    def forward_details(self, features: Tensor) -> dict[str, Tensor]:
        """Return the logits with every intermediate result that the notebooks inspect.

        Keys: logits, sam_logits (s_m) and gcn_logits (s_r), all (B, C); activation_maps
        (B, C, H, W) before the sigmoid; static_adjacency (C, C), the learned A_s weight;
        dynamic_adjacency (B, C, C).
        """
        sam = self.sam(features)
        dgcn = self.dgcn(sam.representations)
        gcn_logits = self.classifier(dgcn.node_features)
        return {
            "logits": (sam.sam_logits + gcn_logits) / 2,
            "sam_logits": sam.sam_logits,
            "gcn_logits": gcn_logits,
            "activation_maps": sam.activation_maps,
            "static_adjacency": self.dgcn.static_adjacency.weight[:, :, 0],
            "dynamic_adjacency": dgcn.dynamic_adjacency,
        }


class GlobalPoolHead(nn.Module):
    """Baseline head: global average (or max) pooling of X (B, D, H, W), then Linear(D, C)."""

    def __init__(self, in_channels: int, num_classes: int, pooling: str = "avg") -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; expected one of {POOLINGS}")
        self.pooling = pooling
        self.classifier = nn.Linear(in_channels, num_classes)

    # Tensors indexed by class, with the dimensions that run over classes (for reordering).
    class_dims = {"classifier.weight": (0,), "classifier.bias": (0,)}

    def pool(self, features: Tensor) -> Tensor:
        """Pool (B, D, H, W) over space to (B, D)."""
        if self.pooling == "max":
            return features.amax(dim=(2, 3))
        return features.mean(dim=(2, 3))

    def forward(self, features: Tensor) -> Tensor:
        return self.classifier(self.pool(features))

    def forward_details(self, features: Tensor) -> dict[str, Tensor]:
        """Return logits (B, C) and class activation maps (B, C, H, W).

        The maps apply the classifier at every position, bias included, so with average
        pooling their spatial mean equals the logits.
        """
        activation_maps = torch.einsum("cd,bdhw->bchw", self.classifier.weight, features)
        activation_maps = activation_maps + self.classifier.bias[None, :, None, None]
        return {"logits": self.forward(features), "activation_maps": activation_maps}
