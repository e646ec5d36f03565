"""Paper-ready exports of a leaderboard: LaTeX (booktabs), CSV (tidy, round-trips through pandas), Markdown.

LaTeX goes through `pandas.io.formats.style.Styler.to_latex` (needs jinja2): booktabs rules, best value
per column in bold, second underlined, mean ± std over seeds, and a caption naming dataset, metric,
protocol and metric version. Rows are method variants (one per method) unless `transpose=True`, which puts
categories in rows and the mean in the last row, as many papers do.
"""

from __future__ import annotations

import io
import re

import pandas as pd

from ad_core.analysis.leaderboard import MEAN, Leaderboard
from ad_core.catalog import EXPORT_FORMATS as FORMATS

SUFFIXES = {"latex": ".tex", "csv": ".csv", "md": ".md"}

_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
    "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}", ">": r"\textgreater{}",
}
_LATEX_RE = re.compile("|".join(re.escape(k) for k in _LATEX_SPECIAL))


def latex_escape(text: str) -> str:
    text = _LATEX_RE.sub(lambda m: _LATEX_SPECIAL[m.group()], str(text))
    # Unicode the default pdflatex setup cannot typeset.
    return (text.replace("±", r"$\pm$").replace("†", r"$^\dagger$").replace("⚠", r"$^\ddagger$")
            .replace("–", "--").replace("≤", r"$\leq$").replace("≥", r"$\geq$").replace("−", "-")
            .replace("≈", r"$\approx$"))


# Names as papers print them (LaTeX rows and caption); methods and datasets not listed keep their own name.
METHOD_DISPLAY_NAMES = {
    "patchcore": "PatchCore", "patchcore_unified": "PatchCore (unified)", "reconpatch": "ReConPatch",
    "reconpatch_unified": "ReConPatch (unified)", "isstad": "ISSTAD", "ltad": "LTAD", "prn": "PRN",
}
DATASET_DISPLAY_NAMES = {"mvtec": "MVTec AD", "btad": "BTAD"}


def display_label(board: Leaderboard, variant: str) -> str:
    """'PatchCore (fast)' for the variant 'patchcore (fast)' (preset, config hash and marks are kept)."""
    label = board.row_label(variant)
    method = str(board.rows.at[variant, "method"])
    return METHOD_DISPLAY_NAMES.get(method, method) + label[len(method):] if label.startswith(method) else label


def latex_caption(board: Leaderboard) -> str:
    """A caption as short as papers have them: what was measured on what (split and evaluation frame), and how
    to read the table. The full provenance (split protocol, seed list, metric version) goes into a comment
    above the table."""
    if type(board).caption is not Leaderboard.caption:
        # A table with a caption of its own (the imbalance group table defines its groups there): keep it whole.
        return latex_escape(board.caption(with_root=False))
    seeds = board.seeds
    dataset = DATASET_DISPLAY_NAMES.get(board.dataset, board.dataset)
    spread = f"mean ± std over {len(seeds)} seeds" if len(seeds) > 1 else "single seed"
    frame = f", frame: {board.eval_frame_label}" if board.eval_frame_label else ""
    text = (f"{board.metric_label} on {dataset} ({board.split_label} split{frame}), {spread}; best in bold, second "
            "underlined.")
    if board.incomplete:
        text += " † Mean over a subset of the categories."
    if board.any_random:
        text += " ⚠ Random backbone weights, not ranked."
    return latex_escape(text)


EFFICIENCY_COLUMNS = {"images_per_s": ("img/s", "{:.1f}"), "fit_s": ("fit s", "{:.1f}"), "scorer": ("kNN", "{}")}


def _matrix(board: Leaderboard, transpose: bool, efficiency: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Display strings and ranks, methods as rows (or categories as rows when transposed).

    `efficiency` appends images/s, training seconds per category and the nearest-neighbour search of
    memory-bank methods (methods-as-rows only; not ranked,
    since faster is not comparable across devices)."""
    cells = board.cells()
    rank = board.rank.copy()
    rank.index = cells.index
    if efficiency and not transpose:
        for key, (name, fmt) in EFFICIENCY_COLUMNS.items():
            values = board.rows[key] if key in board.rows else pd.Series(float("nan"), index=board.rows.index)
            if key == "scorer" and values.isna().all():
                continue  # no memory-bank method in the table
            cells[name] = [fmt.format(v) if pd.notna(v) else "–" for v in values.loc[board.mean.index]]
            rank[name] = 0
    if transpose:
        cells, rank = cells.T, rank.T
        cells.index.name = "category"
    return cells, rank


def _latex_label(text: str) -> str:
    random = "random weights" in text
    text = latex_escape(text.replace("⚠ random weights", "").strip())
    return text + (r"$^\ddagger$" if random else "")


def to_latex(board: Leaderboard, transpose: bool = False, label: str | None = None, efficiency: bool = False) -> str:
    """A complete `table` environment (booktabs) ready to \\input into a paper (needs \\usepackage{booktabs}).

    Methods go by their display names ('PatchCore (fast)'); the caption is short, and the full one (split
    protocol, seeds, metric version) is a comment above the table."""
    if board.empty:
        raise ValueError("the leaderboard is empty: nothing to export")
    cells, rank = _matrix(board, transpose, efficiency)
    names = {board.row_label(v): display_label(board, v) for v in board.mean.index}
    if transpose:
        cells.columns = [names.get(c, c) for c in cells.columns]
    else:
        cells.index = pd.Index([names.get(i, i) for i in cells.index], name=cells.index.name)
    body = cells.map(latex_escape)
    body.index = [_latex_label(i) for i in cells.index]
    body.columns = [_latex_label(c) for c in cells.columns]
    # One header line: the row label's name goes into the top-left cell.
    body.index.name = None
    body.columns.name = latex_escape(cells.index.name or "")
    marks = rank.map(lambda r: "textbf:--rwrap;" if r == 1 else ("underline:--rwrap;" if r == 2 else ""))
    marks.index, marks.columns = body.index, body.columns
    styler = body.style.apply(lambda _: marks, axis=None)
    latex = styler.to_latex(
        hrules=True,  # booktabs: \toprule, \midrule, \bottomrule
        column_format="l" + "c" * body.shape[1],
        caption=latex_caption(board),
        label=label or f"tab:{re.sub('[^a-z0-9]+', '-', f'{board.dataset}-{board.metric}'.lower())}",
        position_float="centering",
    )
    if transpose:
        # A rule above the mean row, as in papers.
        latex = re.sub(rf"(?m)^({re.escape(MEAN)} &)", r"\\midrule\n\1", latex)
    details = latex_escape(board.caption(with_root=False)).replace("\n", " ")
    return f"% Needs \\usepackage{{booktabs}}. {details}\n{latex}"


def to_csv(board: Leaderboard) -> str:
    """Tidy CSV (one row per variant x category incl. the mean): `pd.read_csv` gives `board.long()` back."""
    buffer = io.StringIO()
    board.long().to_csv(buffer, index=False)
    return buffer.getvalue()


def to_markdown(board: Leaderboard, transpose: bool = False, efficiency: bool = False) -> str:
    """GitHub Markdown table: best in **bold**, second <u>underlined</u>, caption below."""
    if board.empty:
        raise ValueError("the leaderboard is empty: nothing to export")
    cells, rank = _matrix(board, transpose, efficiency)

    def fmt(value: str, r: int) -> str:
        value = value.replace("|", r"\|")
        return f"**{value}**" if r == 1 else (f"<u>{value}</u>" if r == 2 else value)

    header = [cells.index.name or "", *map(str, cells.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([":---"] + [":---:"] * len(cells.columns)) + "|"]
    for i, row in enumerate(cells.index):
        values = [fmt(cells.iat[i, j], int(rank.iat[i, j])) for j in range(len(cells.columns))]
        lines.append("| " + " | ".join([str(row), *values]) + " |")
    return "\n".join(lines) + f"\n\n{board.caption()}\n"


def render(board: Leaderboard, fmt: str, transpose: bool = False, efficiency: bool = False) -> str:
    if fmt == "latex":
        return to_latex(board, transpose, efficiency=efficiency)
    if fmt == "csv":
        return to_csv(board)
    if fmt == "md":
        return to_markdown(board, transpose, efficiency=efficiency)
    raise ValueError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
