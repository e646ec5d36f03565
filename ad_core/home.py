"""Where the app keeps its data (demo datasets, databases, artifacts) unless told otherwise."""

from __future__ import annotations

import os
from pathlib import Path


def app_home() -> Path:
    """`IAD_HOME`, default `~/.iad`. Created on first use."""
    home = Path(os.environ.get("IAD_HOME", Path.home() / ".iad")).expanduser()
    home.mkdir(parents=True, exist_ok=True)
    return home


def demo_root() -> Path:
    return app_home() / "datasets" / "demo"
