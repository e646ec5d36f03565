"""The dashboard's pages, in navigation order: the one registry `dashboard/app.py` builds its navigation
from and `dashboard.ui.PAGES` (key -> file, for `st.switch_page` / `st.page_link`) comes from.

Each page is a script in this folder, run by Streamlit (`st.navigation`), never imported.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PageSpec:
    key: str
    file: str  # relative to dashboard/app.py, as st.Page / st.switch_page expect it
    title: str
    icon: str  # a Material icon (rendered by Streamlit itself; emoji fonts are missing on many desktops)
    default: bool = False
    section: str = ""  # navigation section ("" = the unlabelled top group)
    permission: str = "view"  # `db.accounts.PERMISSIONS`: pages a role may not use are not in its navigation


REGISTRY: tuple[PageSpec, ...] = (
    PageSpec("leaderboard", "pages/leaderboard.py", "Leaderboard", ":material/leaderboard:", default=True),
    PageSpec("imbalance", "pages/imbalance.py", "Imbalance", ":material/scatter_plot:"),
    PageSpec("launch", "pages/launch.py", "Launch", ":material/rocket_launch:", permission="launch"),
    PageSpec("jobs", "pages/jobs.py", "Jobs", ":material/list_alt:"),
    PageSpec("run_detail", "pages/run_detail.py", "Run detail", ":material/image_search:"),
    PageSpec("export", "pages/export.py", "Export", ":material/download:"),
    PageSpec("annotate", "pages/annotate.py", "Annotate", ":material/draw:", section="Annotate",
             permission="annotate"),
    PageSpec("annotation_sets", "pages/annotation_sets.py", "Annotation sets", ":material/fact_check:",
             section="Annotate", permission="annotate"),
    PageSpec("users", "pages/users.py", "Users", ":material/group:", section="Admin", permission="manage_users"),
    PageSpec("activity", "pages/activity.py", "Activity", ":material/history:", section="Admin",
             permission="audit"),
)
# Shown instead of every other page while nobody is signed in (sign-in required).
SIGN_IN = PageSpec("sign_in", "pages/sign_in.py", "Sign in", ":material/login:", default=True)


def pages_for(role: str) -> tuple[PageSpec, ...]:
    """The pages a role may use, in navigation order."""
    from db.accounts import allowed

    return tuple(p for p in REGISTRY if allowed(role, p.permission))
