"""The catalogue of names (`ad_core.catalog`): one definition, agreeing with ad_core, and cheap to import."""

from __future__ import annotations

import json
import subprocess
import sys

from ad_core import catalog


def test_dataset_kinds_match_the_loaders() -> None:
    from ad_core.data import DATASET_KINDS

    assert catalog.DATASET_KINDS == DATASET_KINDS


def test_one_definition_of_metrics_statuses_and_queues() -> None:
    from ad_core import metrics
    from db import models
    from workers import settings

    assert metrics.METRIC_NAMES is catalog.METRIC_NAMES and metrics.METRIC_VERSION is catalog.METRIC_VERSION
    assert catalog.METRIC_NAMES == tuple(catalog.METRICS)
    assert models.JOB_STATUSES is catalog.JOB_STATUSES and models.FINAL_STATUSES is catalog.FINAL_STATUSES
    assert set(catalog.FINAL_STATUSES) < set(catalog.JOB_STATUSES)
    assert settings.QUEUES is catalog.QUEUES


def test_descriptions_are_one_line() -> None:
    assert tuple(catalog.LEARNING_TYPES) == ("one_class", "few_shot_supervised", "multi_class")
    assert tuple(catalog.SPLIT_KINDS) == ("standard", "few_shot", "long_tail")
    for text in [*catalog.LEARNING_TYPES.values(), *catalog.SPLIT_KINDS.values()]:
        assert text and "\n" not in text


def test_import_loads_neither_numpy_nor_torch() -> None:
    code = ("import json, sys; import ad_core.catalog; "
            "print(json.dumps([m for m in ('numpy', 'torch', 'pandas') if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == []


def test_method_catalogue_matches_the_registry(monkeypatch) -> None:
    """The torch-free catalogue of built-in methods (names, modules, learning types, presets) is the registry's."""
    from ad_core.methods import available_methods, get_method

    monkeypatch.delenv("IAD_PLUGINS", raising=False)
    assert sorted(catalog.METHODS) == available_methods()
    for name, entry in catalog.METHODS.items():
        cls = get_method(name)
        assert (cls.__module__, cls.learning_type) == (entry.module, entry.learning_type), name
        assert entry.presets == ("paper", *[p for p in cls.Config.PRESETS if p != "paper"]), name


def test_name_checks_and_method_list_import_neither_torch_nor_the_database(tmp_path) -> None:
    """`iad submit` with a typo and `iad methods` answer from the catalogue: no torch, no SQLAlchemy."""
    import os

    code = (
        "import json, sys\n"
        "from workers.cli import main\n"
        "codes = [main(['submit', '--method', 'patchcore', 'patchcor', '--dataset', 'demo']),\n"
        "         main(['submit', '--method', 'patchcore', '--preset', 'turbo', '--dataset', 'demo']),\n"
        "         main(['run', '--method', 'patchcor', '--dataset', 'demo']),\n"
        "         main(['methods'])]\n"
        "print(json.dumps([codes, [m for m in ('torch', 'timm', 'sqlalchemy', 'pandas') if m in sys.modules]]))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "IAD_PLUGINS"}
    env["IAD_HOME"] = str(tmp_path)  # nothing may be created there either
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert json.loads(lines[-1]) == [[2, 2, 2, 0], []]
    assert [line.split()[0] for line in lines[:-1]] == sorted(catalog.METHODS)
    assert "patchcore    presets: paper, fast, ensemble" in lines
    errors = proc.stderr.strip().splitlines()
    assert errors[0] == ("error: unknown method 'patchcor' (did you mean patchcore?); available: "
                         + ", ".join(sorted(catalog.METHODS)))
    assert errors[1] == "error: unknown preset 'turbo' for patchcore; known presets: paper, fast, ensemble"
    assert errors[2].startswith("error: unknown method 'patchcor'") and len(errors) == 3
    assert list(tmp_path.iterdir()) == []
