"""Numbers as printed in Luo and Lin's paper (Tables 1-3), in percent except where noted.

These are cited, never measured here; every table in the book marks them as the paper's.
The paper itself cites the rows of other methods from their publications.
"""

from __future__ import annotations

import math

NA = math.nan  # "-" in the paper: not reported

METRIC_KEYS = ("mAP", "CP", "CR", "CF1", "OP", "OR", "OF1")
TOP3_KEYS = ("CP", "CR", "CF1", "OP", "OR", "OF1")

# Table 1, MS-COCO 2014 validation: (mAP, CP, CR, CF1, OP, OR, OF1) for all labels, then
# (CP, CR, CF1, OP, OR, OF1) for the top-3 labels of each image.
TABLE1 = {
    "ResNet-101": ((79.7, 82.7, 67.4, 74.3, 86.4, 71.8, 78.4), (85.9, 60.5, 71.0, 90.2, 64.2, 75.0)),
    "DecoupleNet": ((82.2, 83.1, 71.6, 76.3, 84.7, 74.8, 79.5), (NA,) * 6),
    "ML-GCN": ((83.0, 85.1, 72.0, 78.0, 85.8, 75.4, 80.3), (89.2, 64.1, 74.6, 90.5, 66.5, 76.7)),
    "SSGRL": ((83.8, 89.9, 68.5, 76.8, 91.3, 70.8, 79.7), (91.9, 62.5, 72.7, 93.8, 64.1, 76.2)),
    "ADD-GCN": ((84.2, 85.1, 73.6, 78.9, 86.2, 76.6, 81.1), (89.2, 65.2, 78.9, 90.9, 67.1, 77.2)),
    "MSD-GCN (paper)": ((87.1, 86.8, 76.6, 81.4, 87.1, 79.2, 83.0), (90.4, 67.0, 76.9, 91.4, 68.9, 78.6)),
}

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip

# Table 2, PASCAL VOC 2007 test: per-class AP in VOC_CLASSES order, then mAP.
TABLE2 = {
    "CNN-RNN": (96.7, 83.1, 94.2, 92.8, 61.2, 82.1, 89.1, 94.2, 64.2, 83.6, 70.0, 92.4, 91.7, 84.2, 93.7, 59.8, 93.2, 75.3, 99.7, 78.6, 84.0),
    "ResNet-101": (99.1, 97.3, 96.2, 94.7, 68.3, 92.9, 95.9, 94.6, 77.9, 89.9, 85.1, 94.7, 96.8, 94.3, 98.1, 80.8, 93.1, 79.1, 98.2, 91.1, 90.8),
    "ML-GCN": (99.5, 98.5, 98.6, 98.1, 80.8, 94.6, 97.2, 98.2, 82.3, 95.7, 86.4, 98.2, 98.4, 96.7, 99.0, 84.7, 96.7, 84.3, 98.9, 93.7, 94.0),
    "SSGRL": (99.7, 98.4, 98.0, 97.6, 85.7, 96.2, 98.2, 98.8, 82.0, 98.1, 89.7, 98.8, 98.7, 97.0, 99.0, 86.9, 98.1, 85.8, 99.0, 93.7, 95.0),
    "ADD-GCN": (99.8, 98.6, 98.1, 98.3, 85.8, 97.2, 98.3, 98.1, 83.1, 98.3, 88.2, 98.6, 98.6, 97.4, 99.0, 88.3, 98.7, 87.1, 99.2, 94.4, 95.2),
    "MSD-GCN (paper)": (99.8, 98.7, 98.3, 99.0, 86.7, 98.1, 98.5, 98.3, 85.8, 98.3, 88.9, 98.8, 99.0, 97.4, 99.2, 88.3, 98.7, 90.7, 99.5, 96.1, 95.6),
}  # fmt: skip

# Table 3, the ablation. The paper's caption says "on the VOC dataset", but its text (section 4.5)
# says the ablation runs on MS-COCO, and row (a) repeats ADD-GCN's COCO numbers of Table 1.
# Columns: switches (Res2Net, CBAM, GELU, BCEWithLogitsLoss, Adam), then mAP, CF1, OF1,
# batch time (seconds), average loss (a plain number), and the epoch of the best result
# (None where the paper prints "/").
TABLE3 = {
    "a": dict(switches=(0, 0, 0, 0, 0), mAP=84.2, CF1=78.9, OF1=81.1, batch_time=0.51, average_loss=0.08, best_epoch=None),
    "b": dict(switches=(1, 0, 0, 0, 0), mAP=85.8, CF1=80.1, OF1=82.0, batch_time=0.52, average_loss=0.05, best_epoch=None),
    "c": dict(switches=(1, 1, 0, 0, 0), mAP=86.7, CF1=81.3, OF1=82.9, batch_time=0.49, average_loss=0.05, best_epoch=13),
    "d": dict(switches=(1, 1, 1, 0, 0), mAP=86.9, CF1=81.9, OF1=83.0, batch_time=0.50, average_loss=0.05, best_epoch=11),
    "e": dict(switches=(1, 1, 1, 1, 1), mAP=87.1, CF1=82.1, OF1=83.0, batch_time=0.46, average_loss=0.03, best_epoch=8),
}  # fmt: skip
SWITCHES = ("Res2Net", "CBAM", "GELU", "BCEWithLogitsLoss", "Adam")
