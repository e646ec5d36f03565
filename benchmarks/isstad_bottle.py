"""Train ISSTAD (default: the `fast` preset, CPU) on MVTec AD bottle and print metrics and timings.

    python benchmarks/isstad_bottle.py --root /work/shared/data/mvtec_ad [--preset fast] [--threads 2]
        [--set stage2_epochs=40 --set crop=128 ...] [--device cpu|cuda] [--seed 0] [--json out.json]

`--root` may be the MVTec AD root (containing bottle/) or the bottle folder itself. The fast preset works
on the whole image resized to 128x128 (resize = crop = 128, i.e. the official Resize([224, 224]) geometry
at a smaller size) with 16-px patches; pixel metrics are computed at that resolution against
nearest-resized masks. Random-init results are labelled "random (NOT pretrained)".
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ad_core import metrics  # noqa: E402
from ad_core.data import ImageDataset, load_split  # noqa: E402
from ad_core.methods.isstad import ISSTAD, ISSTADConfig  # noqa: E402


def parse_overrides(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set expects key=value, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="/work/shared/data/mvtec_ad")
    parser.add_argument("--category", default="bottle")
    parser.add_argument("--preset", default="fast")
    parser.add_argument("--set", action="append", default=[], help="config override key=value (repeatable)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="write metrics, timings, config and loss history here")
    parser.add_argument("--save", help="save the fitted model here")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    root = Path(args.root)
    if root.name == args.category and (root / "train").is_dir():
        root = root.parent

    config = ISSTADConfig.build(args.preset, **parse_overrides(args.set))
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    split = load_split("mvtec", root, args.category)
    model = ISSTAD(config, device=args.device)
    prep = model.preprocess()
    train_loader = torch.utils.data.DataLoader(
        ImageDataset(split.train, prep),
        batch_size=config.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(args.seed),
    )
    test_loader = torch.utils.data.DataLoader(ImageDataset(split.test, prep), batch_size=config.batch_size)
    print(
        f"isstad preset={args.preset} on {args.category}: {split.counts()} threads={args.threads}", flush=True
    )

    start = time.perf_counter()

    def progress(fraction: float, message: str) -> None:
        print(f"[{time.perf_counter() - start:7.1f}s {100 * fraction:5.1f}%] {message}", flush=True)

    cpu_start = time.process_time()
    model.fit(train_loader, progress)
    fit_s = time.perf_counter() - start
    fit_cpu_s = time.process_time() - cpu_start

    start = time.perf_counter()
    labels, scores, masks, maps = [], [], [], []
    for batch in test_loader:
        prediction = model.predict(batch["image"])
        scores.append(prediction.image_scores)
        maps.append(prediction.anomaly_maps)
        masks.append(batch["mask"][:, 0].numpy() > 0.5)
        labels.append(np.asarray(batch["label"]))
    predict_s = time.perf_counter() - start
    result = metrics.compute_all(
        np.concatenate(labels), np.concatenate(scores), np.concatenate(masks), np.concatenate(maps)
    )
    timings = {
        "fit_s": round(fit_s, 1),
        # CPU seconds of this process (all threads): wall time on a shared machine is much noisier.
        "fit_cpu_s": round(fit_cpu_s, 1),
        **model.timings,
        "predict_s": round(predict_s, 1),
        "test_images_per_s": round(len(split.test) / predict_s, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    if args.device.startswith("cuda"):
        timings["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)

    print(f"\nweights: {model.weights_source}")
    print(f"corruption: {model.corruption_settings}")
    for key, value in result.items():
        print(f"{key:>16s}: {value:.4f}" if isinstance(value, float) else f"{key:>16s}: {value}")
    for key, value in timings.items():
        print(f"{key:>16s}: {value}")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "metrics": result,
                    "timings": timings,
                    "config": config.to_dict(),
                    "weights_source": model.weights_source,
                    "history": model.history,
                    "seed": args.seed,
                    "threads": args.threads,
                },
                indent=1,
            )
        )
    if args.save:
        model.save(args.save)


if __name__ == "__main__":
    main()
