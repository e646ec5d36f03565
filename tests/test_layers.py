"""ad_core is a pure library: importing any of its modules must not load an app layer or its frameworks."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import ad_core

REPO_ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = ("db", "workers", "dashboard", "sqlalchemy", "celery", "streamlit")


def test_every_ad_core_module_imports_without_the_app_layers() -> None:
    modules = sorted(m.name for m in pkgutil.walk_packages(ad_core.__path__, prefix="ad_core."))
    assert {"ad_core.runner", "ad_core.splits", "ad_core.analysis.leaderboard", "ad_core.components.coreset",
            "ad_core.methods.isstad.model"} <= set(modules)
    script = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=300, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
