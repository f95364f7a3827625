"""Models: timm backbones (optionally with CBAM), the ADD-GCN, ML-GCN and pooling heads, weights.

Build a model from a config with `build_model(ModelConfig(...))`.
"""

from .backbone import (
    PYPI_LITE0_SOURCE,
    architecture_name,
    backbone_data_config,
    cbam_block_args,
    create_backbone,
    residual_blocks,
)
from .heads import (
    ADDGCNHead,
    DynamicGCN,
    GlobalPoolHead,
    PerClassLinear,
    SemanticAttention,
    make_activation,
)
from .mlgcn import (
    GraphConvolution,
    MLGCNHead,
    correlation_matrix,
    label_cooccurrence,
    load_glove,
    normalized_adjacency,
)
from .model import ModelConfig, MultiLabelModel, build_head, build_model, config_from_dict
from .weights import (
    TIMM_SOURCE,
    efficientnet_lite0_pypi_state_dict,
    load_backbone_weights,
    map_state_dict_by_order,
    read_checkpoint,
)

__all__ = [
    "ADDGCNHead",
    "DynamicGCN",
    "GlobalPoolHead",
    "GraphConvolution",
    "MLGCNHead",
    "ModelConfig",
    "MultiLabelModel",
    "PYPI_LITE0_SOURCE",
    "PerClassLinear",
    "SemanticAttention",
    "TIMM_SOURCE",
    "architecture_name",
    "backbone_data_config",
    "build_head",
    "build_model",
    "cbam_block_args",
    "config_from_dict",
    "correlation_matrix",
    "create_backbone",
    "efficientnet_lite0_pypi_state_dict",
    "label_cooccurrence",
    "load_backbone_weights",
    "load_glove",
    "make_activation",
    "map_state_dict_by_order",
    "normalized_adjacency",
    "read_checkpoint",
    "residual_blocks",
]
