"""Multi-label image recognition with ADD-GCN and the MSD-GCN switches.

Replication of Luo and Lin, "Multi-Label Image Recognition Based on Attention and
Multi-Scale Dynamic Graph Convolutional Network", built on ADD-GCN (Ye et al., ECCV 2020).
The package follows the pipeline: data, models, training, metrics, results.
"""

__version__ = "0.1.0"
