"""Annotation: masks from a drawing, versions (history, revert, concurrent saves), annotation sets, MVTec-layout
export/import round trip, and bad input that must leave nothing behind."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import jobs_helpers
import numpy as np
import pytest
from PIL import Image

from ad_core import annotations as ann
from ad_core.annotations import AnnotationError, GroundTruth

db_url = jobs_helpers.db_url
postgres_db = jobs_helpers.postgres_db


@pytest.fixture
def store(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("IAD_ARTIFACTS", str(tmp_path / "artifacts"))
    monkeypatch.setenv("IAD_USER", "alice")
    return db_url


def _tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


def _first(demo_root: Path, folder: str, category: str = "brick") -> str:
    return sorted((demo_root / category / "test" / folder).iterdir())[0].relative_to(demo_root).as_posix()


def _defect_image(demo_root: Path) -> tuple[str, str]:
    folder = sorted(p.name for p in (demo_root / "brick" / "test").iterdir() if p.name != "good")[0]
    return _first(demo_root, folder), folder


# --- pure parts ---------------------------------------------------------------------------------------------------


def test_image_suffixes_match_the_loaders() -> None:
    from ad_core.data.base import IMAGE_SUFFIXES

    assert ann.IMAGE_SUFFIXES == IMAGE_SUFFIXES


def _stroke_layer(h: int, w: int, boxes: list[tuple[tuple[int, int, int, int], tuple[int, int, int], float]]) -> np.ndarray:
    """RGBA of strokes composited in order (source-over), like the browser's canvas."""
    rgb = np.zeros((h, w, 3), np.float64)
    alpha = np.zeros((h, w), np.float64)
    for (x0, y0, x1, y1), colour, a in boxes:
        region = (slice(y0, y1), slice(x0, x1))
        out_a = a + alpha[region] * (1 - a)
        rgb[region] = (np.asarray(colour) * a + rgb[region] * alpha[region][..., None] * (1 - a)) / out_a[..., None]
        alpha[region] = out_a
    return np.dstack([rgb, alpha * 255]).round().astype(np.uint8)


def test_compose_mask_paints_erases_and_keeps_the_base_elsewhere() -> None:
    base = np.zeros((32, 32), bool)
    base[0:8, 0:8] = True  # kept: no stroke over it
    base[20:32, 20:32] = True  # partly erased below
    a = 0.6
    # Canvas at 4x the image: 128 x 128.
    drawing = _stroke_layer(128, 128, [
        ((40, 40, 80, 80), ann.PAINT_RGB, a),  # image pixels 10..20
        ((80, 80, 128, 128), ann.ERASE_RGB, a),  # erases image pixels 20..32 ...
        ((100, 100, 120, 120), ann.PAINT_RGB, a),  # ... then paint over the eraser wins: 25..30
    ])
    mask = ann.compose_mask(base, drawing, (32, 32), stroke_alpha=a)
    expected = base.copy()
    expected[10:20, 10:20] = True
    expected[20:32, 20:32] = False
    expected[25:30, 25:30] = True
    assert np.array_equal(mask, expected)
    # Faint anti-aliasing (alpha below half the stroke's) does not count.
    faint = _stroke_layer(32, 32, [((0, 16, 32, 32), ann.PAINT_RGB, 0.2)])
    assert not ann.compose_mask(None, faint, (32, 32), stroke_alpha=a).any()
    with pytest.raises(AnnotationError, match="starting mask is 8x8"):
        ann.compose_mask(np.zeros((8, 8), bool), drawing, (32, 32))


def test_f1_threshold_prefill_and_disagreement() -> None:
    truth = np.array([0, 0, 1, 1, 0, 1], bool)
    scores = np.array([0.1, 0.4, 0.35, 0.8, 0.2, 0.9])
    t = ann.f1_optimal_threshold(truth, scores)
    # Brute force over the distinct scores.
    best = max(np.unique(scores), key=lambda th: (2 * ((scores >= th) & truth).sum()
                                                  / ((scores >= th).sum() + truth.sum()), th))
    assert t == pytest.approx(best)
    assert ann.f1_optimal_threshold(np.zeros(3, bool), np.ones(3)) is None

    amap = np.zeros((32, 32), np.float32)
    amap[8:16, 8:16] = 1.0
    mask = ann.prefill_mask(amap, 0.5, "full:32", (128, 64))  # a 128 x 64 image: x4 across, x2 down
    assert mask.shape == (64, 128)
    assert mask[18:30, 34:62].all() and not mask[:12].any() and not mask[:, :28].any() and not mask[36:].any()

    spread = ann.disagreement({1: {"a": 0.1, "b": 0.5, "c": 0.9}, 2: {"a": 0.9, "b": 0.5, "c": 0.1}, 3: {"a": 1.0}})
    assert spread == {"a": 1.0, "b": 0.0, "c": 1.0}


def test_ground_truth_rules() -> None:
    with pytest.raises(AnnotationError, match="good image cannot have defect pixels"):
        GroundTruth.of(0, "good", np.ones((4, 4), bool))
    with pytest.raises(AnnotationError, match="needs a defect type"):
        GroundTruth.of(1, "", None)
    with pytest.raises(AnnotationError, match="names a folder"):
        GroundTruth.of(1, "../etc", None)
    empty = GroundTruth.of(1, "scratch", np.zeros((4, 4), bool))
    assert empty.mask_sha256 is None and empty.same_as(GroundTruth.of(1, "scratch", None))
    assert ann.gt_version_key({}) == ann.DEFAULT_GT_VERSION
    one = {"a/test/good/1.png": GroundTruth.of(1, "scratch", np.eye(4, dtype=bool))}
    key = ann.gt_version_key(one)
    assert key.startswith(ann.GT_PREFIX) and key == ann.gt_version_key(dict(one))
    assert key != ann.gt_version_key({"a/test/good/1.png": GroundTruth.of(1, "stain", np.eye(4, dtype=bool))})


# --- versions -----------------------------------------------------------------------------------------------------


def test_versions_history_revert_and_files_untouched(store: str, demo_root: Path) -> None:
    from db import annotations as dba
    from db import artifacts

    before = _tree_digest(demo_root)
    rel, defect = _defect_image(demo_root)
    root = str(demo_root)
    w, h = Image.open(demo_root / rel).size
    first = np.zeros((h, w), bool)
    first[5:20, 5:30] = True
    v1 = dba.save_annotation("demo", root, rel, 1, defect, first, url=store)
    assert (v1.version, v1.overtaken) == (1, [])
    second = np.zeros((h, w), bool)
    second[40:50, 40:60] = True
    v2 = dba.save_annotation("demo", root, str(demo_root / rel), 1, "stain", second, source="prefill",
                             detail={"job_id": 3, "threshold": 0.5}, base_id=v1.id, url=store)
    assert v2.version == 2
    rows = dba.history("demo", root, rel, url=store)
    assert [(r.version, r.author, r.defect_type, r.source, r.replaces_id) for r in rows] == [
        (1, "alice", defect, "drawn", None), (2, "alice", "stain", "prefill", v1.id)]
    assert rows[1].source_detail == {"job_id": 3, "threshold": 0.5}
    stored = ann.read_mask_file(artifacts.artifacts_root() / rows[0].mask_path)
    assert np.array_equal(stored, first)
    assert not list((artifacts.artifacts_root()).rglob("*.tmp"))

    back = dba.revert("demo", root, rel, 1, base_id=v2.id, url=store)
    assert back.version == 3
    current = dba.current_annotations("demo", root, url=store)[rel]
    assert (current.version, current.defect_type, current.source, current.source_detail) == (3, defect, "revert",
                                                                                              {"to_version": 1})
    assert np.array_equal(ann.read_mask_file(artifacts.artifacts_root() / current.mask_path), first)
    # Revert to the dataset's own ground truth (version 0): the original mask, copied.
    orig = dba.revert("demo", root, rel, 0, url=store)
    row = dba.current_annotations("demo", root, url=store)[rel]
    truth = dba.resolve_image("demo", root, rel).dataset_truth()
    assert orig.version == 4 and row.mask_sha256 == truth.mask_sha256 and row.defect_type == defect
    assert len(dba.history("demo", root, rel, url=store)) == 4
    assert _tree_digest(demo_root) == before  # the dataset's files are never written


def test_two_people_saving_at_once_both_keep_their_version(store: str, demo_root: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from db import annotations as dba

    rel = _first(demo_root, "good")
    root = str(demo_root)
    base = dba.save_annotation("demo", root, rel, 0, "good", None, url=store)
    barrier = threading.Barrier(2)
    results, errors = {}, []

    def save(who: str, rows: slice) -> None:
        w, h = Image.open(demo_root / rel).size
        mask = np.zeros((h, w), bool)
        mask[rows] = True
        try:
            barrier.wait()
            results[who] = dba.save_annotation("demo", root, rel, 1, f"by_{who}", mask, author=who,
                                               base_id=base.id, url=store)
        except Exception as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=save, args=(who, slice(i * 10, i * 10 + 5))) for i, who in enumerate(("bob", "eve"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert sorted(r.version for r in results.values()) == [2, 3]
    later = max(results.values(), key=lambda r: r.version)
    earlier = min(results.values(), key=lambda r: r.version)
    assert earlier.overtaken == [] and later.overtaken == [(earlier.version, "bob" if earlier is results["bob"] else "eve")]
    rows = dba.history("demo", root, rel, url=store)
    assert [r.version for r in rows] == [1, 2, 3]
    assert dba.current_annotations("demo", root, url=store)[rel].id == later.id


def test_bad_input_is_refused_and_nothing_is_saved(store: str, demo_root: Path, tmp_path: Path) -> None:
    from db import annotations as dba
    from db import artifacts

    root = str(demo_root)
    rel, defect = _defect_image(demo_root)
    w, h = Image.open(demo_root / rel).size
    with pytest.raises(AnnotationError, match=r"is 10x10 but its image is"):
        dba.save_annotation("demo", root, rel, 1, defect, np.ones((10, 10), bool), url=store)
    with pytest.raises(AnnotationError, match="no longer exists"):
        dba.save_annotation("demo", root, "brick/test/good/999.png", 0, "good", None, url=store)
    outside = tmp_path / "elsewhere.png"
    Image.new("RGB", (w, h)).save(outside)
    with pytest.raises(AnnotationError, match="outside the dataset root"):
        dba.save_annotation("demo", root, str(outside), 0, "good", None, url=store)
    with pytest.raises(AnnotationError, match="outside the dataset root"):
        dba.save_annotation("demo", root, "brick/../../elsewhere.png", 0, "good", None, url=store)
    with pytest.raises(AnnotationError, match="not a test image"):
        dba.save_annotation("demo", root, _first_train(demo_root), 0, "good", None, url=store)
    with pytest.raises(AnnotationError, match="good image cannot have defect pixels"):
        dba.save_annotation("demo", root, rel, 0, "good", np.ones((h, w), bool), url=store)
    assert dba.current_annotations("demo", root, url=store) == {}
    assert not (artifacts.artifacts_root() / "annotations").exists() or not list(
        (artifacts.artifacts_root() / "annotations").rglob("*.png"))


def _first_train(demo_root: Path) -> str:
    return sorted((demo_root / "brick" / "train" / "good").iterdir())[0].relative_to(demo_root).as_posix()


# --- sets, export, import ---------------------------------------------------------------------------------------


def _edit_two(store: str, demo_root: Path) -> tuple[str, str, np.ndarray]:
    """Erase one defect's mask (now good) and add a defect to a good image; returns (erased, added, added mask)."""
    from db import annotations as dba

    root = str(demo_root)
    erased, _ = _defect_image(demo_root)
    dba.save_annotation("demo", root, erased, 0, "good", None, url=store)
    added = _first(demo_root, "good")
    w, h = Image.open(demo_root / added).size
    mask = np.zeros((h, w), bool)
    mask[30:60, 20:50] = True
    dba.save_annotation("demo", root, added, 1, "dent", mask, url=store)
    return erased, added, mask


def test_export_import_round_trip_gives_identical_masks_and_labels(store: str, demo_root: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from ad_core.data import load_split
    from db import annotations as dba
    from db.session import dispose_engine

    root = str(demo_root)
    erased, added, mask = _edit_two(store, demo_root)
    info = dba.create_set("demo", root, "fix-1", ["brick"], url=store)
    assert info.n_changed == 2 and info.gt_version.startswith(ann.GT_PREFIX)
    with pytest.raises(AnnotationError, match="already has an annotation set named 'fix-1'"):
        dba.create_set("demo", root, "fix-1", ["brick"], url=store)
    target = tmp_path / "fix-1.zip"
    manifest = dba.export_set(info.id, target, url=store)
    assert manifest["gt_version"] == info.gt_version

    # The zip loads as an MVTec-layout folder with the new ground truth.
    import zipfile

    unpacked = tmp_path / "unpacked"
    zipfile.ZipFile(target).extractall(unpacked)
    split = load_split("folder", unpacked, "brick")
    by_name = {Path(s.path).relative_to(unpacked).as_posix(): s for s in split.test}
    added_entry = next(e for e in manifest["entries"] if e["source"] == added)
    assert added_entry["path"].startswith("brick/test/dent/") and by_name[added_entry["path"]].label == 1
    assert np.array_equal(ann.read_mask_file(by_name[added_entry["path"]].mask_path), mask)
    erased_entry = next(e for e in manifest["entries"] if e["source"] == erased)
    assert erased_entry["path"].startswith("brick/test/good/") and erased_entry["mask"] is None
    assert len(split.train) == len(load_split("demo", root, "brick").train)

    _, before = dba.set_truths(info.id, url=store)
    pixels = {p: t.pixels(Image.open(demo_root / p).size) for p, t in before.items()}
    # Import into a fresh database (and artifact store): the same ground truth, the same ground-truth version.
    fresh = f"sqlite:///{tmp_path / 'fresh.sqlite'}"
    monkeypatch.setenv("IAD_ARTIFACTS", str(tmp_path / "artifacts-2"))
    try:
        result = dba.import_set("demo", root, target, url=fresh)
        assert result.new_versions == 2 and result.set.name == "fix-1"
        assert result.set.gt_version == info.gt_version
        _, after = dba.set_truths(result.set.id, url=fresh)
        assert sorted(before) == sorted(after) == sorted([erased, added])
        for path in before:
            assert (before[path].label, before[path].defect_type) == (after[path].label, after[path].defect_type)
            assert np.array_equal(pixels[path], after[path].pixels(Image.open(demo_root / path).size))
        rows = dba.current_annotations("demo", root, url=fresh)
        assert {r.source for r in rows.values()} == {"imported"}
        # Importing the same set again adds no version (nothing differs) and needs a new name.
        with pytest.raises(AnnotationError, match="already has an annotation set"):
            dba.import_set("demo", root, target, url=fresh)
        again = dba.import_set("demo", root, target, name="fix-1-again", url=fresh)
        assert again.new_versions == 0 and again.set.gt_version == info.gt_version
    finally:
        dispose_engine(fresh)


def test_import_refuses_bad_archives_and_saves_nothing(store: str, demo_root: Path, tmp_path: Path) -> None:
    import io
    import json
    import zipfile

    from db import annotations as dba

    root = str(demo_root)
    rel, defect = _defect_image(demo_root)

    def archive(entries: list[dict], files: dict[str, bytes]) -> io.BytesIO:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as zf:
            zf.writestr(ann.MANIFEST, json.dumps({"format": ann.EXPORT_FORMAT, "name": "bad", "entries": entries}))
            for name, data in files.items():
                zf.writestr(name, data)
        buffer.seek(0)
        return buffer

    good = {"path": "x.png", "source": _first(demo_root, "good"), "label": 1, "defect_type": "dent",
            "mask": "m1.png", "annotated": True}
    w, h = Image.open(demo_root / good["source"]).size
    ok_mask = ann.mask_to_png(np.ones((h, w), bool))
    wrong = {"path": "y.png", "source": rel, "label": 1, "defect_type": defect, "mask": "m2.png", "annotated": True}
    with pytest.raises(AnnotationError, match=r"the mask of .* is 7x7"):
        dba.import_set("demo", root, archive([good, wrong], {"m1.png": ok_mask, "m2.png": ann.mask_to_png(np.ones((7, 7), bool))}),
                       url=store)
    missing = dict(good, source="brick/test/good/does-not-exist.png")
    with pytest.raises(AnnotationError, match="not a test image"):
        dba.import_set("demo", root, archive([good, missing], {"m1.png": ok_mask}), url=store)
    outside = dict(good, source="../outside.png")
    with pytest.raises(AnnotationError, match="outside the dataset root"):
        dba.import_set("demo", root, archive([good, outside], {"m1.png": ok_mask}), url=store)
    assert dba.current_annotations("demo", root, url=store) == {}
    assert dba.list_sets(url=store) == []
