"""Where the app keeps its data (demo datasets, databases, artifacts) unless told otherwise.

`app_home()` is the one place that derives it: `IAD_HOME`, default `~/.iad`. The database URL, the
embedded broker and the artifact store all build their defaults on it.
"""

from __future__ import annotations

import os
from pathlib import Path


def app_home(create: bool = True) -> Path:
    """`IAD_HOME`, default `~/.iad` (read at call time), as an absolute path. Created unless `create=False`."""
    home = Path(os.environ.get("IAD_HOME", Path.home() / ".iad")).expanduser().absolute()
    if create:
        home.mkdir(parents=True, exist_ok=True)
    return home


def demo_root() -> Path:
    return app_home() / "datasets" / "demo"


def multiclass_demo_root() -> Path:
    """The 10-class demo (`ad_core.data.MULTICLASS_DEMO_CATEGORIES`) for long-tailed and unified runs."""
    return app_home() / "datasets" / "demo-multiclass"
