"""Paper-reported numbers next to reproduced ones, only where the setting matches.

The numbers live in `paper_numbers.csv` next to this module (versioned with the code, shipped as package
data): one row per method, dataset, category (or `mean` = the dataset mean over all its classes) and metric,
with the value in percent as printed, the setting it was obtained in and its source:

| column | meaning |
|---|---|
| `method`, `dataset`, `category`, `metric` | registry name, dataset kind, class or `mean`, metric key (`ad_core.catalog.METRICS`) |
| `value` | the number as reported, in percent |
| `backbone` | architecture (timm name without weights tag), `ensemble:a+b+c`, or `?` (not known from the sources) |
| `resolution` | the input size the method saw (crop), or `?` |
| `split` | split recipe in `--split` form (`standard`, `few_shot:k=10`), or `external:...` for training lists of the paper's own that no recipe here reproduces |
| `frame` | where pixel metrics were computed: `native` (each method's own geometry, as papers do) |
| `requires` | `key=value;...` config fields that must match (e.g. the coreset ratio) |
| `assumed` | setting fields the sources do not state (the row says what was assumed; a match is then flagged) |
| `setting` | the setting in words |
| `source`, `table`, `page`, `evidence`, `url`, `note` | where the number comes from; evidence: P = paper text, C = official code/results, S = secondary source (not checked against the PDF), U = unofficial transcription |

`paper_vs_reproduced(board, configs)` puts every paper row of the board's dataset and metric next to each
variant of that method in the leaderboard: the reproduced value and the difference only where the setting
matches (backbone class, resolution, split recipe, evaluation frame for pixel metrics, required config fields,
pretrained weights, and for `mean` rows a mean over every class of the dataset); otherwise the reasons, e.g.
"backbone: paper wide_resnet50_2, this run tf_efficientnet_lite0".

Pure pandas; no SQL.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ad_core.analysis.leaderboard import MEAN, Leaderboard
from ad_core.catalog import DATASET_KINDS, METHODS, METRICS
from ad_core.errors import ConfigError

PAPER_NUMBERS = Path(__file__).with_name("paper_numbers.csv")
COLUMNS = ["method", "dataset", "category", "metric", "value", "backbone", "resolution", "split", "frame",
           "requires", "assumed", "setting", "source", "table", "page", "evidence", "url", "note"]
EVIDENCE = {"P": "paper text", "C": "official code / released results", "S": "secondary source",
            "U": "unofficial transcription"}
UNKNOWN = "?"
EXTERNAL = "external:"
# Classes per dataset kind: a paper's dataset mean is over all of them.
DATASET_CLASSES = {"mvtec": 15, "btad": 3}
PIXEL_METRICS = ("pixel_auroc", "aupro", "pixel_f1_max", "pixel_ap")
RESULT_COLUMNS = ["method", "variant", "category", "metric", "paper", "reproduced", "difference", "comparable",
                  "why", "assumed", "paper_setting", "this_run", "source", "evidence", "note"]


def load_paper_numbers(path: str | Path | None = None) -> pd.DataFrame:
    """The table of paper numbers, checked (ValueError naming the line for a malformed row); `value` as float."""
    path = Path(path) if path is not None else PAPER_NUMBERS
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}")
    for i, row in table.iterrows():
        where = f"{path.name} line {int(str(i)) + 2}"
        problems = []
        if row["method"] not in METHODS:
            problems.append(f"unknown method {row['method']!r}")
        if row["dataset"] not in DATASET_KINDS:
            problems.append(f"unknown dataset {row['dataset']!r}")
        if row["metric"] not in METRICS:
            problems.append(f"unknown metric {row['metric']!r}")
        try:
            if not 0 <= float(row["value"]) <= 100:
                problems.append(f"value {row['value']} is not a percentage")
        except ValueError:
            problems.append(f"value {row['value']!r} is not a number")
        if row["resolution"] != UNKNOWN and not row["resolution"].isdigit():
            problems.append(f"resolution {row['resolution']!r} is neither a number nor '?'")
        if not row["split"].startswith(EXTERNAL):
            try:
                _split_key(row["split"])
            except ConfigError as exc:
                problems.append(f"split: {exc}")
        if row["evidence"] not in EVIDENCE:
            problems.append(f"evidence {row['evidence']!r} is not one of {', '.join(EVIDENCE)}")
        if not row["source"].strip() or not row["table"].strip():
            problems.append("source and table are required")
        if problems:
            raise ValueError(f"{where}: {'; '.join(problems)}")
    return table.astype({"value": float})


def _split_key(text: str) -> str:
    from ad_core.splits import SplitSpec

    return SplitSpec.parse(text).key


def _split_label(text: str) -> str:
    if text.startswith(EXTERNAL):
        return text[len(EXTERNAL):].strip()
    from ad_core.splits import SplitSpec

    return SplitSpec.parse(text).label


def backbone_class(name: str) -> str:
    """The architecture of a timm name: 'wide_resnet50_2.tv_in1k' -> 'wide_resnet50_2'."""
    return str(name).partition(".")[0]


def run_backbone(config: Mapping[str, Any]) -> str:
    """A config's backbone class: the architecture, or 'ensemble:a+b+c' for an ensemble of backbones."""
    ensemble = config.get("ensemble_backbones") or ()
    if ensemble:
        return "ensemble:" + "+".join(backbone_class(b) for b in ensemble)
    return backbone_class(config.get("backbone", UNKNOWN))


def _same(value: Any, text: str) -> bool:
    """Whether a config value equals the `requires` text of a paper row."""
    if isinstance(value, bool):
        return text.strip().lower() in (("1", "true", "yes") if value else ("0", "false", "no"))
    if isinstance(value, int | float):
        try:
            return math.isclose(float(value), float(text), rel_tol=1e-9, abs_tol=1e-12)
        except ValueError:
            return False
    if isinstance(value, list | tuple):
        return [str(v) for v in value] == [t for t in text.replace(",", " ").split() if t]
    return str(value) == text.strip()


@dataclass(frozen=True)
class RunSetting:
    """What decides whether a leaderboard variant's numbers can stand next to a paper's."""

    method: str
    dataset: str
    backbone: str
    resolution: int | None
    split_key: str
    split_label: str
    frame: str | None
    config: Mapping[str, Any]
    random_weights: bool = False

    @classmethod
    def of(cls, board: Leaderboard, variant: str, config: Mapping[str, Any]) -> RunSetting:
        crop = config.get("crop")
        return cls(method=str(board.rows.at[variant, "method"]), dataset=board.dataset,
                   backbone=run_backbone(config) if config else UNKNOWN,
                   resolution=int(crop) if crop is not None else None, split_key=board.split_key,
                   split_label=board.split_label, frame=board.eval_frame, config=config,
                   random_weights=bool(board.rows.at[variant, "random_weights"]))

    def describe(self) -> str:
        resolution = f" at {self.resolution}" if self.resolution else ""
        weights = " (random weights)" if self.random_weights else ""
        frame = f", frame {self.frame}" if self.frame else ""
        return f"{self.backbone}{weights}{resolution}, {self.split_label} split{frame}"


def describe_paper(row: Mapping[str, Any]) -> str:
    """The paper row's setting in short: 'wide_resnet50_2 at 224, standard split'."""
    backbone = "backbone not known" if row["backbone"] == UNKNOWN else row["backbone"]
    resolution = "" if row["resolution"] == UNKNOWN else f" at {row['resolution']}"
    return f"{backbone}{resolution}, {_split_label(row['split'])} split"


def mismatches(row: Mapping[str, Any], setting: RunSetting) -> list[str]:
    """Why a paper row's number cannot stand next to a run's (empty: the settings match)."""
    reasons = []
    if setting.method != row["method"] or setting.dataset != row["dataset"]:
        reasons.append(f"method/dataset: paper {row['method']} on {row['dataset']}, this run {setting.method} on "
                       f"{setting.dataset}")
    if setting.random_weights:
        reasons.append("this run used random backbone weights")
    if row["backbone"] == UNKNOWN:
        reasons.append("the paper's backbone is not known")
    elif setting.backbone != row["backbone"]:
        reasons.append(f"backbone: paper {row['backbone']}, this run {setting.backbone}")
    if row["resolution"] == UNKNOWN:
        reasons.append("the paper's input size is not known")
    elif setting.resolution != int(row["resolution"]):
        reasons.append(f"resolution: paper {row['resolution']}, this run {setting.resolution}")
    if row["split"].startswith(EXTERNAL):
        reasons.append(f"split: the paper trained on its own lists ({_split_label(row['split'])}), not on "
                       f"this run's {setting.split_label}")
    elif _split_key(row["split"]) != setting.split_key:
        reasons.append(f"split: paper {_split_label(row['split'])}, this run {setting.split_label}")
    if row["metric"] in PIXEL_METRICS and setting.frame is not None and setting.frame != row["frame"]:
        reasons.append(f"pixel metrics: paper in the {row['frame']} frame, this table in {setting.frame}")
    for pair in filter(None, (p.strip() for p in str(row["requires"]).split(";"))):
        key, _, text = pair.partition("=")
        if key not in setting.config:
            reasons.append(f"{key}: paper {text or '(empty)'}, this run's config has no such field")
        elif not _same(setting.config[key], text):
            reasons.append(f"{key}: paper {text or '(empty)'}, this run {setting.config[key]!r}")
    return reasons


def _source(row: Mapping[str, Any]) -> str:
    page = f", p. {row['page']}" if row["page"] not in ("", "-") else ""
    return f"{row['source']}; {row['table']}{page}"


def paper_vs_reproduced(
    board: Leaderboard, configs: Mapping[str, Mapping[str, Any]], paper: pd.DataFrame | None = None
) -> pd.DataFrame:
    """The paper numbers of the board's dataset and metric next to every variant of their method.

    `configs`: config hash -> complete config (`db.results.jobs_frame`'s `config_hash` and `config`). Per-class
    paper rows appear for the board's classes, `mean` rows always. Values in percent; `reproduced` and
    `difference` (reproduced - paper, percentage points) only where `comparable`; `why` says what differs
    otherwise, `assumed` which paper settings are assumptions."""
    paper = load_paper_numbers() if paper is None else paper
    rows = paper[(paper["dataset"] == board.dataset) & (paper["metric"] == board.metric)]
    out = []
    for _, row in rows.iterrows():
        column = MEAN if row["category"] == "mean" else row["category"]
        if column != MEAN and column not in board.categories:
            continue
        base = {"method": row["method"], "category": row["category"], "metric": row["metric"],
                "paper": float(row["value"]), "assumed": row["assumed"].replace(";", ", "),
                "paper_setting": describe_paper(row), "source": _source(row), "evidence": row["evidence"],
                "note": row["note"]}
        variants = [] if board.empty else [v for v in board.mean.index if board.rows.at[v, "method"] == row["method"]]
        if not variants:
            out.append({**base, "variant": "", "reproduced": None, "difference": None, "comparable": False,
                        "why": f"no result of {row['method']} in this table", "this_run": ""})
            continue
        for variant in variants:
            config = configs.get(str(board.rows.at[variant, "config_hash"]), {})
            setting = RunSetting.of(board, variant, config)
            reasons = mismatches(row, setting)
            value = board.mean.at[variant, column]
            if pd.isna(value):
                reasons.append(f"no result for {row['category']}")
            if column == MEAN:
                have, need = int(board.rows.at[variant, "n_categories"]), DATASET_CLASSES.get(board.dataset)
                if need is not None and have < need:
                    reasons.append(f"this run's mean covers {have} of the {need} classes")
            comparable = not reasons
            reproduced = round(100 * float(value), 4) if comparable else None
            out.append({**base, "variant": variant, "reproduced": reproduced,
                        "difference": round(reproduced - float(row["value"]), 4) if comparable else None,
                        "comparable": comparable, "why": "; ".join(reasons), "this_run": setting.describe()})
    return pd.DataFrame(out, columns=RESULT_COLUMNS)


def summary_line(item: Mapping[str, Any]) -> str:
    """'paper: wide_resnet50_2 at 224, standard split; this run: tf_efficientnet_lite0 at 224, ... — not
    comparable (backbone: ...)' or '... — comparable: reproduced 98.10 vs paper 99.16 (-1.06)'."""
    head = f"paper: {item['paper_setting']}; this run: {item['this_run'] or '-'}"
    if item["comparable"]:
        return (f"{head} — comparable: reproduced {item['reproduced']:.2f} vs paper {item['paper']:.2f} "
                f"({item['difference']:+.2f})")
    return f"{head} — not comparable ({item['why']})"


def caption(board: Leaderboard) -> str:
    return (f"Paper-reported vs reproduced {board.metric_label} on {board.dataset} (percent); reproduced values and "
            f"differences (percentage points) only where the setting matches; split {board.split_label}"
            + (f", evaluation frame {board.eval_frame}" if board.eval_frame else "")
            + f", metric version {board.metric_version}.")


def render(table: pd.DataFrame, fmt: str, board: Leaderboard) -> str:
    """The comparison as CSV (every column), Markdown or LaTeX (booktabs tabular with a caption)."""
    if fmt == "csv":
        buffer = io.StringIO()
        table.to_csv(buffer, index=False)
        return buffer.getvalue()

    def num(v: Any) -> str:
        return "–" if v is None or pd.isna(v) else f"{v:.2f}"

    def diff(v: Any) -> str:
        return "–" if v is None or pd.isna(v) else f"{v:+.2f}"

    rows = [[str(r.method), str(r.variant or "–"), str(r.category), num(r.paper), num(r.reproduced),
             diff(r.difference), "yes" if r.comparable else "no: " + str(r.why), f"{r.source} [{r.evidence}]"]
            for r in table.itertuples()]
    header = ["method", "variant", "category", "paper", "reproduced", "Δ", "comparable", "source"]
    if fmt == "md":
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
        lines += ["| " + " | ".join(c.replace("|", r"\|") for c in row) + " |" for row in rows]
        return "\n".join(lines) + f"\n\n{caption(board)}\n"
    if fmt == "latex":
        from ad_core.analysis.export import latex_escape

        body = "\n".join(" & ".join(latex_escape(c) for c in row[:7]) + r" \\" for row in rows)
        head = " & ".join(r"$\Delta$" if h == "Δ" else latex_escape(h) for h in header[:7])
        sources = "\n".join(f"% {latex_escape(r.method)} {latex_escape(r.category)}: {latex_escape(r.source)}"
                            for r in table.drop_duplicates(["method", "category", "source"]).itertuples())
        return ("% Needs \\usepackage{booktabs}. Sources:\n" + sources + "\n\\begin{table}\n\\centering\n"
                f"\\caption{{{latex_escape(caption(board))}}}\n\\begin{{tabular}}{{lllrrrp{{5cm}}}}\n\\toprule\n"
                + head + " \\\\\n\\midrule\n" + body
                + "\n\\bottomrule\n\\end{tabular}\n\\end{table}\n")
    raise ValueError(f"unknown format {fmt!r}; use csv, md or latex")


__all__ = [
    "PAPER_NUMBERS", "RunSetting", "backbone_class", "caption", "describe_paper", "load_paper_numbers", "mismatches",
    "paper_vs_reproduced", "render", "run_backbone", "summary_line",
]
