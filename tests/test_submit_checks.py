"""Submit-time checks that keep a job from failing after it waited in the queue: pretrained weights that an
offline machine cannot get are refused at `iad submit` (and on the Launch page, through the same planner);
names are checked from the catalogue before anything heavy is imported.

The suite runs with HF_HUB_OFFLINE=1 (conftest); each test here also points the hub cache at an empty folder,
so the answers do not depend on what the machine happens to have cached.
"""

from __future__ import annotations

from pathlib import Path

import jobs_helpers as h
import pytest

from db import queries
from workers.planner import check_names, plan_jobs

TINY_GEOMETRY = ["--set", "crop=64", "--set", "resize=64"]


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return h.make_tiny_demo(tmp_path_factory.mktemp("tiny") / "demo")


@pytest.fixture
def offline_empty_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    import huggingface_hub.constants

    from ad_core import backbones

    cache = tmp_path / "hf-hub"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(backbones, "_hub_probe", None)
    return cache


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> h.Stack:
    st = h.make_stack("submit-checks", tmp_path / "home", f"sqlite:///{tmp_path / 'home' / 'iad.sqlite'}")
    st.apply_env(monkeypatch)
    return st


def _iad(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    from workers.cli import main

    capsys.readouterr()
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_offline_paper_preset_is_refused_at_submit_time_and_fast_is_accepted(
    stack: h.Stack, tiny_root: Path, offline_empty_cache: Path, capsys: pytest.CaptureFixture
) -> None:
    base = ["submit", "--method", "patchcore", "--dataset", "demo", "--root", str(tiny_root), "--category", "brick",
            *TINY_GEOMETRY]
    code, out, err = _iad(capsys, *base)  # paper defaults: WRN-50 with ImageNet weights from the hub
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, (out, err)
    assert lines[0].startswith("error: could not load ImageNet weights for wide_resnet50_2.tv_in1k")
    assert "not in the cache and HF_HUB_OFFLINE is set" in lines[0]
    assert "--backbone tf_efficientnet_lite0 --weights bundled" in lines[0]
    assert queries.list_jobs(limit=None) == []
    assert not (stack.home / "broker.sqlite").exists()

    code, out, err = _iad(capsys, *base, "--preset", "fast", "--group", "fast")  # bundled weights: offline is fine
    assert code == 0, err
    assert [j.config["weights"] for j in queries.list_jobs(group_id="fast", limit=None)] == ["bundled"]


def test_the_launch_page_planner_refuses_the_same_weights(tiny_root: Path, offline_empty_cache: Path) -> None:
    """The dashboard plans through `plan_jobs` too: the refusal is the method's error, nothing is planned."""
    plan = plan_jobs(["patchcore", "reconpatch"], "demo", str(tiny_root), ["brick"], [0],
                     overrides={"crop": 64, "resize": 64})
    assert not plan.ok and plan.requests == []
    assert set(plan.errors) == {"patchcore", "reconpatch"}
    assert all("could not load ImageNet weights for wide_resnet50_2.tv_in1k" in e for e in plan.errors.values())
    fast = plan_jobs(["patchcore", "reconpatch"], "demo", str(tiny_root), ["brick"], [0], preset="fast",
                     overrides={"crop": 64, "resize": 64})
    assert fast.ok and len(fast.requests) == 2


def test_ltad_foundation_weights_are_checked_too(offline_empty_cache: Path) -> None:
    from ad_core.errors import WeightsError
    from ad_core.methods import get_method

    config = get_method("ltad").Config.build()  # paper: open_clip ViT-B-16 with OpenAI's weights
    with pytest.raises(WeightsError, match=r"could not load foundation weights ViT-B-16:openai \(not in the cache"):
        config.check_weights_available()
    get_method("ltad").Config.build("fast").check_weights_available()  # random foundation model (labelled)


def test_name_checks_know_the_catalogue_and_leave_plugins_to_the_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IAD_PLUGINS", raising=False)
    assert check_names(["patchcore", "ltad"], "mvtec", "fast") == {}
    assert check_names(["patchcore"], "mvtec", "default") == {}
    errors = check_names(["patchcore", "recon_patch", "toy_fewshot"], "mvtecc", "ensemble")
    assert errors["dataset"].startswith("unknown dataset kind 'mvtecc'")
    assert errors["recon_patch"].startswith("unknown method 'recon_patch' (did you mean reconpatch?)")
    assert errors["toy_fewshot"].startswith("unknown method 'toy_fewshot'; available:")
    assert "patchcore" not in errors  # patchcore has an ensemble preset
    assert check_names(["ltad"], "demo", "ensemble") == {
        "ltad": "unknown preset 'ensemble' for ltad; known presets: paper, fast"}

    monkeypatch.setenv("IAD_PLUGINS", "toy_methods")  # may register toy_fewshot: only the registry can say
    assert check_names(["toy_fewshot", "patchcore"], "demo", "turbo") == {
        "patchcore": "unknown preset 'turbo' for patchcore; known presets: paper, fast, ensemble"}
