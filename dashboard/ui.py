"""Widgets and small helpers shared by the dashboard pages."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from ad_core.analysis import leaderboard as lb
from ad_core.catalog import DEFAULT_FRAME, METRICS
from dashboard import auth, state
from dashboard.pages import REGISTRY
from db import queries
from db import results as db_results
from db.models import Job

PAGES = {page.key: page.file for page in REGISTRY}  # key -> file for st.switch_page / st.page_link
# Material icons (rendered by Streamlit itself; emoji fonts are missing on many Linux desktops).
STATUS_ICONS = {"queued": ":material/schedule:", "running": ":material/play_circle:",
                "succeeded": ":material/check_circle:", "failed": ":material/error:", "cancelled": ":material/block:"}
# Plain-text cell symbols of the matrix view (one per seed).
STATUS_CELLS = {"queued": "·", "running": "▶", "succeeded": "✓", "failed": "✗", "cancelled": "–"}
VIEW_KEY = "leaderboard_view"  # the last leaderboard view, shared by the Leaderboard and Export pages


def categories_text(categories: list[str], width: int = 3) -> str:
    """A job's categories for a table cell: all of them when few, else the count and the first `width` (a
    multi-class job over 15 classes must not push the other columns out of the table)."""
    if len(categories) <= width + 1:
        return ", ".join(categories)
    return f"{len(categories)} classes: {', '.join(categories[:width])}, …"


def job_label(job: Job) -> str:
    preset = f" ({job.preset})" if job.preset else ""
    return (f"#{job.id} {job.method}{preset} · {job.dataset.kind} · {categories_text(job.categories)} · seed "
            f"{job.seed} · {job.status}")


# How long the demo takes (one worker runs its jobs one after another; measured on a 2-core CPU).
DEMO_DURATION = {
    "default": "On a 2-core CPU it takes about 15 minutes: PatchCore's rows arrive after a few minutes, "
               "ReConPatch trains longer; a GPU worker or more cores are faster.",
    "small": "On a 2-core CPU it takes a few minutes.",
}


def first_run_box() -> None:
    """On an empty database: one click generates the demo data and launches a small comparison."""
    methods = state.demo_methods()
    size = state.demo_size()
    with st.container(border=True):
        st.subheader("Welcome: your results database is empty")
        st.markdown(
            f"One click generates the **demo dataset** (synthetic defects with exact masks on real texture "
            f"photos; brick, grass, gravel{', small size' if size != 'default' else ''}) and launches a small "
            f"comparison: **{' + '.join(methods) or 'no method registered'}**, preset `{state.DEMO_PRESET}`, "
            f"3 categories, 1 seed. {DEMO_DURATION.get(size, DEMO_DURATION['default'])} The leaderboard and "
            f"heatmaps fill in as jobs finish. Jobs run on a worker: `iad up` starts one together with this dashboard."
        )
        if not auth.current_actor().can("launch"):
            st.info("Launching needs the researcher role: ask a researcher or an admin to run the demo.")
            return
        if st.button("Generate demo data and launch the demo comparison", type="primary", key="launch_demo",
                     disabled=not methods):
            try:
                with st.spinner("Generating the demo dataset and submitting jobs..."):
                    group, ids = state.launch_demo()
            except Exception as exc:  # shown to the user: a broker or dataset problem they can fix
                st.error(f"Could not launch the demo: {exc}")
                return
            st.session_state["flash"] = f"Demo comparison submitted: {len(ids)} jobs in group {group}."
            st.switch_page(PAGES["jobs"])


def flash() -> None:
    """Show (once) a message left by the previous page, e.g. after a switch_page."""
    message = st.session_state.pop("flash", None)
    if message:
        st.success(message)


# --- leaderboard view controls (Leaderboard and Export pages) ----------------------------------------------


@dataclass
class View:
    dataset: str
    root: str
    metric: str
    metric_version: str | None
    methods: list[str]
    categories: list[str]
    include_random: bool
    transpose: bool
    split: str | None = None  # split key; None = the default (standard when present)
    split_label: str | None = None
    eval_frame: str | None = None  # evaluation frame key; None = the default (full:256 when present)
    gt_version: str | None = None  # ground-truth version; None = the dataset's own files

    def board(self, results: pd.DataFrame) -> lb.Leaderboard:
        timings = db_results.timings_frame(results["job_id"].unique().tolist()) if len(results) else None
        return lb.build_leaderboard(
            results, self.metric, self.metric_version, self.methods or None, self.categories or None,
            self.include_random, timings, dataset=self.dataset, split=self.split, eval_frame=self.eval_frame,
            gt_version=self.gt_version,
        )

    def cli(self) -> str:
        """The equivalent `iad export` command line."""
        parts = ["iad export", f"--dataset {self.dataset}", f"--root {self.root}", f"--metric {self.metric}"]
        if self.metric_version:
            parts.append(f"--metric-version {self.metric_version}")
        if self.methods:
            parts.append("--methods " + " ".join(self.methods))
        if self.categories:
            parts.append("--categories " + " ".join(self.categories))
        if self.split_label and self.split_label != "standard":
            parts.append(f"--split '{self.split_label}'")
        if self.eval_frame and self.eval_frame != DEFAULT_FRAME:
            parts.append(f"--frame {self.eval_frame}")
        if not self.include_random:
            parts.append("--no-random")
        if self.transpose:
            parts.append("--categories-as-rows")
        return " ".join(parts) + " --format latex"


def _index(options: list, value: object, default: int = 0) -> int:
    return options.index(value) if value in options else default


def view_controls(prefix: str) -> tuple[View, pd.DataFrame] | None:
    """Dataset/metric/filter widgets; returns the view and its results frame (None: no results yet)."""
    choices = db_results.dataset_choices()
    if choices.empty:
        return None
    saved = st.session_state.get(VIEW_KEY, {})
    datasets = list(zip(choices["kind"], choices["root"], strict=True))
    jobs_per = dict(zip(datasets, choices["jobs"], strict=True))
    c1, c2, c3 = st.columns([3, 2, 2])
    kind, root = c1.selectbox(
        "Dataset", datasets, index=_index(datasets, (saved.get("dataset"), saved.get("root"))),
        format_func=lambda d: f"{d[0]} · {d[1]} ({jobs_per[d]} jobs)", key=f"{prefix}_dataset",
    )
    metrics = list(METRICS)
    metric = c2.selectbox("Metric", metrics, index=_index(metrics, saved.get("metric")),
                          format_func=METRICS.get, key=f"{prefix}_metric")
    results = db_results.results_frame(dataset=kind, root=root, metrics=[metric], gt_version=None)
    gt_version = None
    if len(results) and results["gt_version"].nunique() > 1:
        gts = results.drop_duplicates("gt_version").set_index("gt_version")["gt_label"]
        gt_keys = sorted(gts.index, key=lambda k: (k != "dataset", gts[k]))
        gt_version = st.selectbox(
            "Ground truth", gt_keys, index=_index(gt_keys, saved.get("gt_version")), format_func=gts.get,
            key=f"{prefix}_gt", help="Which ground truth the numbers were computed against: the dataset's own files "
            "or an annotation set (runs re-scored from their stored maps). Never mixed in one table.")
    results = results[results["gt_version"] == (gt_version or "dataset")]
    versions = lb.metric_versions(results)[::-1]  # newest first
    version = versions[0] if versions else None
    if len(versions) > 1:
        version = c3.selectbox("Metric version", versions, index=_index(versions, saved.get("metric_version")),
                               key=f"{prefix}_version")
    else:
        c3.text_input("Metric version", value=version or "–", disabled=True, key=f"{prefix}_version_fixed")
    split_key, split_label = None, None
    if len(results):
        recipes = results.drop_duplicates("split_key").set_index("split_key")["split_label"]
        keys = sorted(recipes.index, key=lambda k: (k != lb.STANDARD_SPLIT_KEY, recipes[k]))
        split_key = keys[0]
        if len(keys) > 1:
            split_key = st.selectbox(
                "Split", keys, index=_index(keys, saved.get("split")), format_func=recipes.get,
                key=f"{prefix}_split",
                help="Results on different splits are never pooled: each split recipe is its own table.")
        split_label = recipes[split_key]
        results = results[results["split_key"] == split_key]
    eval_frame = None
    if len(results):
        frames = results.drop_duplicates("eval_frame").set_index("eval_frame")["eval_frame_label"]
        keys = sorted(frames.index, key=lambda k: (k != DEFAULT_FRAME, k))
        eval_frame = keys[0]
        if len(keys) > 1:
            eval_frame = st.selectbox(
                "Evaluation frame", keys, index=_index(keys, saved.get("eval_frame")),
                format_func=lambda k: f"{k}: {frames[k]}", key=f"{prefix}_frame",
                help="On which pixels the pixel metrics were computed. full:256 = every method on the full image "
                     "at 256x256 px; native = each method's own resize + crop (results stored before frames were "
                     "recorded). Results in different frames are never pooled.")
        results = results[results["eval_frame"] == eval_frame]
    c4, c5, c6 = st.columns([3, 3, 2])
    method_options = sorted(results["method"].unique())
    category_options = sorted(results["category"].unique())
    methods = c4.multiselect("Methods", method_options, default=[m for m in saved.get("methods", []) if m in method_options],
                             placeholder="all methods", key=f"{prefix}_methods")
    categories = c5.multiselect("Categories", category_options,
                                default=[c for c in saved.get("categories", []) if c in category_options],
                                placeholder="all categories", key=f"{prefix}_categories")
    include_random = c6.toggle("Random-weight runs", value=saved.get("include_random", True),
                               help="Results from randomly initialised backbones; always marked, never ranked "
                                    "against pretrained ones.", key=f"{prefix}_random")
    transpose = c6.toggle("Categories as rows", value=saved.get("transpose", False), key=f"{prefix}_transpose")
    view = View(kind, root, metric, version, methods, categories, include_random, transpose, split_key, split_label,
                eval_frame, gt_version)
    st.session_state[VIEW_KEY] = dataclasses.asdict(view)
    return view, results


# --- styled tables ---------------------------------------------------------------------------------------


def styled_matrix(board: lb.Leaderboard, transpose: bool = False):  # noqa: ANN201 (pandas Styler)
    """Display strings with best in bold and second underlined (for st.table)."""
    cells = board.cells()
    rank = board.rank.copy()
    rank.index = cells.index
    if transpose:
        cells, rank = cells.T, rank.T
        cells.index.name = "category"
    css = rank.map(lambda r: "font-weight: 700" if r == 1 else ("text-decoration: underline" if r == 2 else ""))
    styler = cells.style.set_uuid("leaderboard").apply(lambda _: css, axis=None)
    # st.table wraps each cell's text in an inline-block, which stops the td's underline from reaching the
    # text; so the second-best cells also get a rule on their paragraph, addressed by the cells' ids (the
    # leading comma closes the "#T_<uuid>" prefix Styler puts before every table-style selector).
    seconds = [f"#T_leaderboard_row{i}_col{j} p" for i, j in zip(*np.nonzero(rank.to_numpy() == 2), strict=True)]
    if seconds:
        styler = styler.set_table_styles([{"selector": ", " + ", ".join(seconds), "props": "text-decoration: underline;"}])
    return styler


# --- artifacts (cached: sliders rerun the page) ---------------------------------------------------------------


@st.cache_resource(max_entries=24, show_spinner=False)
def _load_maps(root: str, rel_path: str, mtime: float) -> tuple[np.ndarray, list[str]]:
    from db import artifacts

    return artifacts.load_map_file(rel_path, Path(root))


def load_maps(rel_path: str) -> tuple[np.ndarray, list[str]] | None:
    """(maps [N, H, W], image paths) of a stored map file, or None if the file is gone."""
    from db import artifacts

    root = artifacts.artifacts_root()
    path = root / rel_path
    if not path.is_file():
        return None
    return _load_maps(str(root), rel_path, path.stat().st_mtime)


@st.cache_resource(max_entries=64, show_spinner=False)
def mask_paths(kind: str, root: str, category: str) -> dict[str, str | None]:
    """Image path -> ground-truth mask path for one category of a dataset on disk ({} if unreadable)."""
    from ad_core.data import DatasetError, load_split

    try:
        split = load_split(kind, root, category)
    except DatasetError:
        return {}
    return {s.path: s.mask_path for s in split.test}


def recent_jobs(status: str | None = "succeeded", limit: int = 300) -> list[Job]:
    return queries.list_jobs(status=status, limit=limit)
