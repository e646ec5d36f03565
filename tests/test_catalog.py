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
