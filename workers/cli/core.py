"""`iad run`, `iad demo`, `iad methods`: the commands that need only ad_core (no database, no broker).

Also the arguments and dataset resolution that `iad submit` shares with `iad run`.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from ad_core.catalog import DATASET_KINDS, DEFAULT_FRAME
from ad_core.config_text import parse_overrides
from ad_core.errors import DatasetError
from ad_core.home import demo_root

if TYPE_CHECKING:
    import pandas as pd

    from ad_core.runner import RunResult, RunSpec

# Heavy modules (torch, timm, the methods) are imported inside the commands that need them, so that
# `iad jobs`, `iad cancel` and `--help` start in well under a second.


def add_run_arguments(parser: argparse.ArgumentParser, multi: bool = False) -> None:
    """Arguments shared by `iad run` and `iad submit` (submit takes several methods and seeds)."""
    if multi:
        parser.add_argument("--method", nargs="+", action="extend", required=True,
                            help="one or more methods (see `iad methods`; repeatable)")
    else:
        parser.add_argument("--method", required=True, help="a method name (see `iad methods`)")
    parser.add_argument("--dataset", required=True, choices=DATASET_KINDS)
    parser.add_argument("--root", help="dataset root folder (default for demo: the generated demo dataset)")
    parser.add_argument("--category", nargs="+", action="extend", help="category/product (repeatable); default: all")
    parser.add_argument("--backbone", help="timm model name (default: the method's)")
    parser.add_argument("--weights", help="imagenet | bundled | random (tests only) | PATH to a state_dict")
    parser.add_argument("--preset", help="config preset, e.g. fast or paper (default: paper defaults)")
    if multi:
        parser.add_argument("--seeds", nargs="+", type=int, action="extend", help="seeds (repeatable; default: 0)")
        parser.add_argument("--annotations", metavar="SET",
                            help="an annotation set of this dataset (id, name or ground-truth version): the jobs train "
                                 "on (few_shot draws) and are scored against its ground truth instead of the "
                                 "dataset's files")
    else:
        parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--split", default="standard",
                        help="split recipe: standard (the dataset as downloaded) | few_shot[:k=10,setting=general|hard,"
                             "defect_type=T,source=all|annotated,seed=N] (DRA protocol; seed defaults to the run's; "
                             "source=annotated draws from an annotation set's images, see --annotations)")
    parser.add_argument("--frame", default=DEFAULT_FRAME,
                        help=f"evaluation frame of the pixel metrics: full (= {DEFAULT_FRAME}, the full image at 256 x "
                             "256 px for every method; a cropping method's cut-away border gets the image's lowest "
                             "score) | full:N | native (each method's own resize + crop, as in the papers)")
    parser.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE", help="config override")


def resolve_dataset(dataset: str, root: str | None, categories: list[str] | None) -> tuple[str, list[str]]:
    from ad_core.data import list_categories, make_demo_dataset

    if root is None:
        if dataset != "demo":
            raise DatasetError(f"--root is required for --dataset {dataset}")
        root = str(make_demo_dataset(demo_root()))
    if not Path(root).expanduser().is_dir():
        raise DatasetError(f"dataset root {root} does not exist or is not a folder")
    return str(Path(root).expanduser()), categories or list_categories(dataset, root)


def metrics_table(result: RunResult) -> pd.DataFrame:
    import pandas as pd

    rows = {cat: {**r.metrics, "fit_s": r.timings["fit_s"], "img/s": r.timings["images_per_s"]}
            for cat, r in result.categories.items()}
    table = pd.DataFrame.from_dict(rows, orient="index")
    if len(table) > 1:
        table.loc["mean"] = table.mean(numeric_only=True)
    return table


def tqdm_progress(desc: str) -> tuple[Callable[[float, str], None], tqdm]:
    bar = tqdm(total=1000, desc=desc, unit="‰", bar_format="{l_bar}{bar}| {elapsed}<{remaining} {postfix}")

    def progress(fraction: float, message: str) -> None:
        bar.n = int(fraction * 1000)
        bar.set_postfix_str(message[:60], refresh=False)
        bar.refresh()

    return progress, bar


def execute(spec: RunSpec, json_path: str | None) -> RunResult:
    from ad_core.runner import run

    progress, bar = tqdm_progress(f"{spec.method} on {spec.dataset}")
    try:
        result = run(spec, progress)
    finally:
        bar.close()
    if result.provenance["random_weights"]:
        print("WARNING: backbone weights are RANDOM (not pretrained); these numbers are for testing only.")
    print(f"\n{spec.method} · {spec.dataset} · seed {spec.seed} · weights: {result.provenance['weights_source']}"
          f" · frame: {spec.eval_frame.label}")
    print(metrics_table(result).to_string(float_format=lambda v: f"{v:.4f}", na_rep="null"))
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(result.to_json(), indent=2))
        print(f"wrote {json_path}")
    return result


def cmd_run(args: argparse.Namespace) -> int:
    from ad_core.splits import SplitSpec
    from workers.planner import MatrixPlan, check_names

    # A typo fails before torch is imported (seconds) or a demo dataset is generated.
    SplitSpec.parse(args.split)
    MatrixPlan(errors=check_names([args.method], args.dataset, args.preset)).raise_errors()
    from ad_core.runner import RunSpec

    root, categories = resolve_dataset(args.dataset, args.root, args.category)
    spec = RunSpec(
        method=args.method, dataset=args.dataset, root=root, categories=categories, backbone=args.backbone,
        weights=args.weights, preset=args.preset, seed=args.seed, device=args.device,
        overrides=parse_overrides(args.overrides), split=SplitSpec.parse(args.split).to_dict(), frame=args.frame,
    )
    execute(spec, args.json)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ad_core.data import DEMO_CATEGORIES, MULTICLASS_DEMO_CATEGORIES, make_demo_dataset
    from ad_core.home import multiclass_demo_root
    from ad_core.runner import RunSpec

    categories = MULTICLASS_DEMO_CATEGORIES if args.multiclass else DEMO_CATEGORIES
    root = make_demo_dataset(multiclass_demo_root() if args.multiclass else demo_root(), categories=categories,
                             progress=None)
    print(f"demo dataset: {root} (categories: {', '.join(categories)})")
    if args.no_run:
        return 0
    spec = RunSpec(method="patchcore", dataset="demo", root=str(root), categories=list(categories),
                   preset="fast", seed=args.seed)
    json_path = args.json or str(root.parent.parent / "results" / f"{root.name}-patchcore.json")
    execute(spec, json_path)
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    import os

    from ad_core.catalog import METHODS

    if os.environ.get("IAD_PLUGINS", "").strip():  # plugin methods are only known to the registry (imports torch)
        from ad_core.methods import available_methods, get_method

        presets_of = {name: ["paper", *[p for p in get_method(name).Config.PRESETS if p != "paper"]]
                      for name in available_methods()}
    else:  # the built-in methods from the catalogue: no torch (tests/test_catalog.py keeps it in step)
        presets_of = {name: list(entry.presets) for name, entry in sorted(METHODS.items())}
    for name, presets in presets_of.items():
        print(f"{name:12s} presets: {', '.join(presets)}")
    return 0


def add_core_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="train and evaluate a method on a dataset, here and now")
    add_run_arguments(p)
    p.add_argument("--json", help="write metrics, per-image scores and provenance to this JSON file")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("demo", help="generate the demo dataset and run PatchCore on it (bundled weights)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="where to write the result JSON")
    p.add_argument("--multiclass", action="store_true",
                   help="the 10-class demo (for long-tailed and unified runs) instead of the 3-class one")
    p.add_argument("--no-run", action="store_true", help="only generate the dataset")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("methods", help="list the registered methods and their presets")
    p.set_defaults(func=cmd_methods)
