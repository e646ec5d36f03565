"""Jobs: live table (auto-refreshing fragment), cancel / re-run, matrix view and "re-run missing cells"."""

from __future__ import annotations

import os
import time

import pandas as pd
import streamlit as st

from ad_core.catalog import JOB_STATUSES
from dashboard import auth, state, ui
from db import accounts, queries

REFRESH_S = float(os.environ.get("IAD_DASHBOARD_REFRESH_S", 2.0))
EXPIRE_EVERY_S = 15.0  # how often this page sweeps for jobs of lost workers

st.title("Jobs")
ui.flash()
if state.database_is_empty():
    ui.first_run_box()
    st.stop()

c1, c2, c3 = st.columns([3, 3, 1])
statuses = c1.multiselect("Status", JOB_STATUSES, placeholder="all statuses", key="jobs_status")
groups = queries.list_groups()
group_options = [None, *groups["group_id"]]
wanted = st.query_params.get("group")
group = c2.selectbox("Group (matrix)", group_options, key="jobs_group",
                     index=group_options.index(wanted) if wanted in group_options else 0,
                     format_func=lambda g: "all groups" if g is None else g)
if group is None:
    st.query_params.pop("group", None)
else:
    st.query_params["group"] = group  # a shareable link to this matrix
limit = c3.number_input("Show", min_value=10, max_value=2000, value=100, step=50, key="jobs_limit")


def _table(jobs: list, with_group: bool) -> pd.DataFrame:
    # The columns people scan first come first, so that a narrow window cuts the least useful ones; attempts
    # only when a job may be retried, the group only when the table is not already one group's.
    table = pd.DataFrame([{
        "id": j.id,
        "status": j.status + (" (cancel requested)" if j.cancel_requested and j.status == "running" else ""),
        "progress": round(100 * j.progress),  # whole percent: "49%" next to "100%", never "48.75%"
        "method": j.method + (f" ({j.preset})" if j.preset else ""),
        "categories": ui.categories_text(j.categories),
        "seed": j.seed,
        "elapsed": j.elapsed_text,
        "detail": f"run_detail?job={j.id}" if j.status == "succeeded" else "",
        "message": j.message,
        "worker": f"{j.worker_host} · {j.worker_device or j.device}" if j.worker_host else j.device,
        "dataset": j.dataset.kind,
        "attempts": f"{j.attempts}/{j.max_attempts}",
        "group": j.group_id or "",
    } for j in jobs])
    if all(j.max_attempts <= 1 and j.attempts <= 1 for j in jobs):
        table = table.drop(columns="attempts")
    return table if with_group else table.drop(columns="group")


@st.fragment(run_every=REFRESH_S)
def live_jobs() -> None:
    now = time.monotonic()
    if now - st.session_state.get("jobs_last_expire", 0.0) > EXPIRE_EVERY_S:
        st.session_state["jobs_last_expire"] = now
        try:
            state.expire_stale()
        except Exception as exc:  # the table must still render when the broker is unreachable
            st.caption(f"could not check for lost workers: {exc}")
    counts = queries.job_counts(group_id=group)
    cols = st.columns(len(counts))
    for col, (status, count) in zip(cols, counts.items(), strict=True):
        col.metric(f"{ui.STATUS_ICONS[status]} {status}", count)
    jobs = queries.list_jobs(status=statuses or None, group_id=group, limit=int(limit))
    if not jobs:
        st.info("No jobs match these filters.")
        return
    st.dataframe(_table(jobs, with_group=group is None), hide_index=True, key="jobs_table", column_config={
        "progress": st.column_config.ProgressColumn("progress", min_value=0, max_value=100, format="%d%%",
                                                     width="small"),
        "message": st.column_config.TextColumn(width="medium"),
        "detail": st.column_config.LinkColumn("detail", display_text="open"),
    })
    if counts["queued"] and not counts["running"]:
        st.caption("Queued jobs wait for a worker: `iad up` starts one with the dashboard, or run `iad worker`.")
    failed = [j for j in jobs if j.status == "failed"]
    if failed:
        with st.expander(f"Errors of {len(failed)} failed job(s)"):
            for job in failed:
                st.markdown(f"**{ui.job_label(job)}**")
                st.code(job.error or job.message or "no error text", language=None)
    if group is not None:
        matrix(group)


def matrix(group_id: str) -> None:
    """Live method x category matrix of a group: each cell shows the status of its seeds."""
    jobs = queries.list_jobs(group_id=group_id, limit=None)
    rows = [{"method": j.method + (f" ({j.preset})" if j.preset else ""), "category": c, "seed": j.seed,
             "status": j.status, "id": j.id} for j in jobs for c in j.categories]
    if not rows:
        return
    frame = pd.DataFrame(rows).sort_values("id").drop_duplicates(["method", "category", "seed"], keep="last")
    frame["cell"] = frame["status"].map(ui.STATUS_CELLS)
    grid = frame.pivot_table(index="method", columns="category", values="cell", aggfunc=" ".join)
    legend = ", ".join(f"{symbol} {status}" for status, symbol in ui.STATUS_CELLS.items())
    st.markdown(f"**Matrix of group `{group_id}`** (one symbol per seed: {legend})")
    st.table(grid.fillna(""))


live_jobs()

# Actions run outside the fragment: a click reruns the whole page once. Viewers and annotators see none
# (and `dashboard.state` refuses them server-side anyway).
if not auth.current_actor().can("launch"):
    st.stop()
st.subheader("Actions")
jobs = queries.list_jobs(status=statuses or None, group_id=group, limit=int(limit))
labels = {j.id: ui.job_label(j) for j in jobs}
selected = st.multiselect("Jobs", list(labels), format_func=labels.get, key="jobs_selected",
                          placeholder="choose jobs to cancel or re-run")
c1, c2, c3 = st.columns(3)
# Each action reruns the page afterwards, so the table above shows its effect at once.
done: str | None = None
try:
    if c1.button("Cancel selected", disabled=not selected, key="jobs_cancel"):
        outcome = state.cancel(selected)
        done = "; ".join(f"#{job_id}: {result}" for job_id, result in outcome.items())
    if c2.button("Re-run selected", disabled=not selected, key="jobs_rerun"):
        new_group, ids = state.rerun(selected)
        done = f"Submitted {len(ids)} job(s) ({', '.join(f'#{i}' for i in ids)}) in group {new_group}."
    if group is not None:
        missing = state.missing_cells(group)
        if c3.button(f"Re-run missing cells ({len(missing)})", disabled=not missing, key="jobs_missing",
                     help="cells of this matrix (method x category x seed) without a succeeded, queued or "
                          "running job"):
            ids = state.rerun_missing(group)
            done = f"Submitted {len(ids)} job(s) for the missing cells of {group}."
    else:
        c3.caption("Pick a group to re-run its missing cells.")
except (state.SubmitError, accounts.AccessDenied) as exc:
    st.error(str(exc))
if done:
    st.session_state["flash"] = done
    st.rerun()
