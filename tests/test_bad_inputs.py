"""Bad inputs through the whole system (issue 17): a tiny demo dataset is copied to tmp_path, corrupted, and
run as real PatchCore jobs through `workers.jobs.execute_job` (SQLite, in this process).

Unreadable input fails its own job with a first line that names the file (and no result row or map file is
left); the other category's job on the same root still succeeds. Legitimate but unusual files (16-bit,
greyscale, RGBA images; 0/1 and 0/254 masks; no ground_truth folder) give the scores and metrics of their
plain equivalents. Dataset roots outside IAD_DATA_ROOTS are refused at submit and by the worker.
docs/bad-inputs.md lists each input with the test that covers it.
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Callable
from pathlib import Path

import jobs_helpers as h
import numpy as np
import pytest
from PIL import Image

from db import artifacts, queries

NOTHING = {"metrics": 0, "image_results": 0, "category_runs": 0, "fit_units": 0, "run_records": 0}
PIXEL_METRICS = ("pixel_auroc", "pixel_ap", "pixel_f1_max", "aupro")


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return h.make_tiny_demo(tmp_path_factory.mktemp("tiny") / "demo")


def _copy(tiny_root: Path, dest: Path) -> Path:
    shutil.copytree(tiny_root, dest)
    return dest


def _job(url: str, root: Path, category: str) -> int:
    from ad_core.runner import RunSpec

    spec = RunSpec(method="patchcore", dataset="demo", root=str(root), categories=[category],
                   backbone="tf_efficientnet_lite0", weights="random",
                   overrides={"crop": 64, "resize": 64, "coreset_ratio": 0.1})
    config = spec.validate().to_dict()
    [job_id] = queries.create_jobs(
        [queries.JobRequest("patchcore", "demo", str(root), [category], config, seed=3)], url=url
    )
    return job_id


def _run(url: str, root: Path, category: str = "grass") -> int:
    """One job, run to its end; asserts it succeeded."""
    from workers.jobs import execute_job

    job_id = _job(url, root, category)
    outcome = execute_job(job_id, url=url)
    assert outcome == "succeeded", queries.get_job(job_id, url=url).error
    return job_id


def _scores(url: str, job_id: int, root: Path) -> dict[str, float]:
    """Image score per path relative to the root (so that copies of a dataset compare)."""
    return {Path(r.path).relative_to(root).as_posix(): r.score for r in queries.image_results(job_id, url=url)}


def _metrics(url: str, job_id: int) -> dict[str, float | None]:
    frame = queries.metrics_frame(job_ids=[job_id], url=url)
    return {name: (None if value is None or np.isnan(value) else float(value))
            for name, value in zip(frame.metric, frame.value, strict=True)}


def _images(root: Path, category: str = "grass") -> list[Path]:
    return sorted(p for part in ("train", "test") for p in (root / category / part).rglob("*.png"))


def _masks(root: Path, category: str = "grass") -> list[Path]:
    return sorted((root / category / "ground_truth").rglob("*.png"))


# --------------------------------------------------------------------------- unreadable input: a failed job


def _truncate(root: Path) -> tuple[Path, list[str]]:
    path = root / "grass" / "test" / "hole" / "000.png"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path, [f"cannot read image {path}", "corrupt or truncated"]


def _wrong_size_mask(root: Path) -> tuple[Path, list[str]]:
    path = root / "grass" / "ground_truth" / "stain" / "000_mask.png"
    with Image.open(path) as mask:
        assert mask.size == (64, 64)
        mask.resize((32, 48), Image.NEAREST).save(path)
    return path, [f"mask {path} is 32x48 but its image is 64x64", "misaligned ground truth"]


def _bomb(root: Path) -> tuple[Path, list[str]]:
    # 20,000 x 20,000 pixels of one colour: a valid PNG of ~50 kB (1-bit, compresses to almost nothing).
    path = root / "grass" / "train" / "good" / "003.png"
    Image.new("1", (20_000, 20_000)).save(path)
    assert path.stat().st_size < 100_000
    return path, [f"image {path} is too large to read safely", "400000000 pixels", "MAX_IMAGE_PIXELS"]


@pytest.mark.parametrize("corrupt", [_truncate, _wrong_size_mask, _bomb], ids=["truncated", "mask_size", "bomb"])
def test_unreadable_file_fails_its_job_naming_the_file_and_spares_the_other_job(
    url: str, tiny_root: Path, tmp_path: Path, corrupt: Callable[[Path], tuple[Path, list[str]]]
) -> None:
    from workers.jobs import execute_job

    root = _copy(tiny_root, tmp_path / "data")
    bad_job, good_job = _job(url, root, "grass"), _job(url, root, "brick")
    path, expected = corrupt(root)

    assert execute_job(bad_job, url=url) == "failed"
    job = queries.get_job(bad_job, url=url)
    first_line = job.error.splitlines()[0]
    assert job.status == "failed" and job.message == first_line
    assert str(path) in first_line and all(part in first_line for part in expected), first_line
    assert queries.result_counts(bad_job, url=url) == NOTHING
    assert not (tmp_path / "artifacts" / artifacts.job_dir(bad_job)).exists()

    # The other category of the same root is untouched by it.
    assert execute_job(good_job, url=url) == "succeeded"
    assert len(queries.image_results(good_job, url=url)) == 7
    assert all(v is not None for v in _metrics(url, good_job).values())


# ------------------------------------------------------------------------- legitimate input: read correctly


def _rewrite(paths: list[Path], convert: Callable[[Image.Image], Image.Image]) -> None:
    for path in paths:
        with Image.open(path) as img:
            img.load()
            converted = convert(img)
        converted.save(path)


def _rgba(img: Image.Image) -> Image.Image:
    rgba = img.convert("RGBA")
    alpha = np.random.default_rng(0).integers(0, 256, size=(img.height, img.width), dtype=np.uint8)
    rgba.putalpha(Image.fromarray(alpha))  # alpha varies per pixel: it must not change what is scored
    return rgba


def _gray16(img: Image.Image) -> Image.Image:
    # v * 257 maps 0..255 onto 0..65535: the 16-bit image with exactly the 8-bit one's content.
    return Image.fromarray(np.asarray(img.convert("L"), dtype=np.uint16) * 257)


def test_grayscale_16bit_and_rgba_images_score_as_their_rgb_equivalents(
    url: str, tiny_root: Path, tmp_path: Path
) -> None:
    roots = {name: _copy(tiny_root, tmp_path / name) for name in ("rgb", "rgba", "gray", "gray_rgb", "gray16")}
    _rewrite(_images(roots["rgba"]), _rgba)
    _rewrite(_images(roots["gray"]), lambda img: img.convert("L"))
    _rewrite(_images(roots["gray_rgb"]), lambda img: img.convert("L").convert("RGB"))
    _rewrite(_images(roots["gray16"]), _gray16)
    for name, mode in (("rgba", "RGBA"), ("gray", "L"), ("gray_rgb", "RGB"), ("gray16", "I;16")):
        with Image.open(_images(roots[name])[0]) as img:
            assert img.mode == mode, name  # the files really are what the test says

    scores = {name: _scores(url, _run(url, root), root) for name, root in roots.items()}
    assert len(scores["rgb"]) == 7
    assert scores["rgba"] == pytest.approx(scores["rgb"], rel=1e-6)  # alpha dropped, colour kept
    assert scores["gray"] == pytest.approx(scores["gray_rgb"], rel=1e-6)  # grey repeated into 3 channels
    # 16-bit scaled to 8 bits (not clipped to white, which Pillow's own convert("RGB") does).
    assert scores["gray16"] == pytest.approx(scores["gray_rgb"], rel=1e-6)
    assert scores["gray_rgb"] != pytest.approx(scores["rgb"], rel=1e-3)  # the tint matters: a real difference


def test_masks_stored_as_0_1_or_0_254_give_the_metrics_of_0_255(url: str, tiny_root: Path, tmp_path: Path) -> None:
    roots = {name: _copy(tiny_root, tmp_path / name) for name in ("0_255", "0_1", "0_254")}
    _rewrite(_masks(roots["0_1"]), lambda m: Image.fromarray((np.asarray(m.convert("L")) > 0).astype(np.uint8)))
    _rewrite(_masks(roots["0_254"]),
             lambda m: Image.fromarray((np.asarray(m.convert("L")) > 0).astype(np.uint8) * 254))
    for name, values in (("0_255", {0, 255}), ("0_1", {0, 1}), ("0_254", {0, 254})):
        assert set().union(*(np.unique(np.asarray(Image.open(m))).tolist() for m in _masks(roots[name]))) == values

    metrics = {name: _metrics(url, _run(url, root)) for name, root in roots.items()}
    assert all(metrics["0_255"][m] is not None for m in PIXEL_METRICS)
    assert metrics["0_1"] == pytest.approx(metrics["0_255"], abs=1e-12)
    assert metrics["0_254"] == pytest.approx(metrics["0_255"], abs=1e-12)


def test_mask_rule_is_half_the_masks_maximum_and_unchanged_for_0_255_masks() -> None:
    """The rule both mask readers share: 0/1 and 0/254 masks agree with 0/255; every mask that reaches 255
    reads exactly as under the earlier fixed `> 127` threshold (stored results stay comparable)."""
    from ad_core.annotations import read_mask_file
    from ad_core.frame import mask_pixels

    rng = np.random.default_rng(0)
    shape = rng.random((32, 32)) > 0.7
    for scale in (1, 254, 255):
        assert np.array_equal(mask_pixels(Image.fromarray(shape.astype(np.uint8) * scale)), shape), scale
    soft = rng.integers(0, 256, size=(32, 32), dtype=np.uint8)  # anti-aliased / lossy edges
    soft[0, 0] = 255
    assert np.array_equal(mask_pixels(Image.fromarray(soft)), soft > 127)
    assert not mask_pixels(Image.fromarray(np.zeros((8, 8), np.uint8))).any()  # a good image's empty mask
    assert np.array_equal(mask_pixels(Image.fromarray(shape.astype(np.uint16))), shape)  # 16-bit 0/1
    rgba = Image.fromarray(shape.astype(np.uint8) * 255).convert("RGBA")
    rgba.putalpha(255)  # opaque everywhere: the alpha channel marks nothing
    assert np.array_equal(mask_pixels(rgba), shape)
    buffer = io.BytesIO()
    Image.fromarray(shape.astype(np.uint8)).save(buffer, format="PNG")
    buffer.seek(0)
    assert np.array_equal(read_mask_file(buffer), shape)  # annotation imports read 0/1 masks the same way


def test_missing_ground_truth_folder_reports_pixel_metrics_as_null_with_a_note(
    url: str, tiny_root: Path, tmp_path: Path
) -> None:
    from ad_core.data import load_split

    full = _copy(tiny_root, tmp_path / "full")
    bare = _copy(tiny_root, tmp_path / "bare")
    shutil.rmtree(bare / "grass" / "ground_truth")
    with pytest.warns(UserWarning, match="has no ground_truth folder"):
        split = load_split("demo", bare, "grass")
    assert not split.has_masks and all(s.mask_path is None for s in split.test)

    with_masks = _metrics(url, _run(url, full))
    bare_job = _run(url, bare)
    without = _metrics(url, bare_job)
    assert all(without[m] is None for m in PIXEL_METRICS)
    assert all(with_masks[m] is not None for m in PIXEL_METRICS)
    image_metrics = [m for m in with_masks if m not in PIXEL_METRICS]
    assert image_metrics and all(without[m] == pytest.approx(with_masks[m]) for m in image_metrics)
    [run] = queries.category_runs(bare_job, url=url)
    expected_note = f"demo/grass has no ground_truth folder ({bare / 'grass' / 'ground_truth'})"
    assert any(note.startswith(expected_note) and "pixel metrics will be reported as null" in note
               for note in run.notes), run.notes
    assert sorted(s.has_masks for s in queries.list_splits(url=url)) == [False, True]  # stored with the split


# ------------------------------------------------------------------------------ where the data may live


def _iad(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    from workers.cli import main

    capsys.readouterr()
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_submit_refuses_a_root_outside_iad_data_roots_through_symlinks_and_dotdot(
    tiny_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    stack = h.make_stack("data-roots", tmp_path / "home", f"sqlite:///{tmp_path / 'home' / 'iad.sqlite'}")
    stack.apply_env(monkeypatch)
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    inside_root = _copy(tiny_root, allowed / "demo")
    outside_root = _copy(tiny_root, outside / "demo")
    (allowed / "sub").mkdir()
    link = allowed / "link"
    link.symlink_to(outside_root, target_is_directory=True)
    monkeypatch.setenv("IAD_DATA_ROOTS", f"{tmp_path / 'elsewhere'}:{allowed}")

    def submit(root: str, group: str) -> tuple[int, str]:
        code, _, err = _iad(capsys, "submit", "--method", "patchcore", "--dataset", "demo", "--root", root,
                            "--category", "brick", "--group", group, *h.TINY_ARGS)
        return code, err

    for root, resolved in ((str(link), outside_root), (f"{allowed}/../outside/demo", outside_root)):
        code, err = submit(root, "refused")
        assert code == 2, err
        assert err.startswith(f"error: dataset root {root} (resolves to {resolved}) is outside the allowed data "
                              f"roots (IAD_DATA_ROOTS={tmp_path / 'elsewhere'}:{allowed})"), err
        assert "add its folder to IAD_DATA_ROOTS" in err
    assert queries.list_jobs(group_id="refused", limit=None) == []

    # Inside the allowed roots (also through a `..` that stays inside) is accepted; so is anything when unset.
    assert submit(str(inside_root), "inside") == (0, "")
    assert submit(f"{allowed}/sub/../demo", "inside") == (0, "")
    monkeypatch.delenv("IAD_DATA_ROOTS")
    assert submit(str(link), "unrestricted")[0] == 0
    assert len(queries.list_jobs(group_id="inside", limit=None)) == 2
    assert len(queries.list_jobs(group_id="unrestricted", limit=None)) == 1


def test_worker_refuses_a_queued_job_outside_its_data_roots(
    url: str, tiny_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from workers.jobs import execute_job

    root = _copy(tiny_root, tmp_path / "outside" / "demo")
    job_id = _job(url, root, "grass")  # queued past the planner (or planned on a host without the policy)
    (tmp_path / "allowed").mkdir()
    monkeypatch.setenv("IAD_DATA_ROOTS", str(tmp_path / "allowed"))
    assert execute_job(job_id, url=url) == "failed"
    job = queries.get_job(job_id, url=url)
    assert job.message.startswith(f"dataset root {root} is outside the allowed data roots "
                                  f"(IAD_DATA_ROOTS={tmp_path / 'allowed'})"), job.message
    assert queries.result_counts(job_id, url=url) == NOTHING
