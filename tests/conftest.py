"""Shared fixtures: a small generated demo dataset and the real MVTec AD bottle category when present."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# Set before any test module imports huggingface_hub/timm: tests never download weights.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parent.parent
MVTEC_ROOT = (REPO_ROOT / ".." / "shared" / "data" / "mvtec_ad").resolve()

# Small enough to generate in about a second, big enough for every method to fit and score.
DEMO_FIXTURE_PARAMS = {"seed": 0, "n_train": 10, "n_test_good": 4, "n_test_defect": 8, "image_size": 128}


@pytest.fixture(scope="session")
def demo_params() -> dict:
    """The make_demo_dataset arguments behind `demo_root` (all DEMO_CATEGORIES)."""
    return dict(DEMO_FIXTURE_PARAMS)


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A demo dataset (brick, grass, gravel; 10 train, 4 good + 8 defective test images, 128 px)."""
    from ad_core.data import make_demo_dataset

    return make_demo_dataset(tmp_path_factory.mktemp("demo") / "demo", **DEMO_FIXTURE_PARAMS)


@pytest.fixture(scope="session")
def mvtec_bottle_root() -> Path:
    """Root of the real MVTec AD copy (holding bottle/); skips the test when it is absent."""
    if not (MVTEC_ROOT / "bottle" / "train" / "good").is_dir():
        message = f"MVTec AD bottle not present at {MVTEC_ROOT / 'bottle'}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message}: CI must have ../shared/data")
        pytest.skip(message)
    return MVTEC_ROOT


@pytest.fixture
def url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A private SQLite results database, IAD_HOME and artifact store for one test; yields the database URL."""
    url = f"sqlite:///{tmp_path / 'iad.sqlite'}"
    monkeypatch.setenv("IAD_DATABASE_URL", url)
    monkeypatch.setenv("IAD_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("IAD_ARTIFACTS", str(tmp_path / "artifacts"))
    yield url
    from db.session import dispose_engine

    dispose_engine(url)
