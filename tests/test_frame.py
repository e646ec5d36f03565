"""The evaluation frame (`ad_core.frame`): maps of any geometry back into the full image, masks into the
frame, the runner scoring every method on the same pixels, and the frame as a comparability key.

Hand computations use exact cases of bilinear resizing (align_corners=False): a resize by an integer factor
k samples input pixel k*j + (k-1)/2, i.e. exactly one pixel for odd k and the mean of two for even k.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from ad_core.errors import ConfigError
from ad_core.frame import (
    DEFAULT_FRAME,
    EvalFrame,
    Placement,
    frame_identity,
    map_to_frame,
    mask_to_frame,
    placement,
)
from ad_core.methods.base import AnomalyModel, MethodConfig, Prediction, register, unregister
from ad_core.metrics import compute_all as COMPUTE_ALL  # noqa: N812 (the real one, before any test wraps it)

# --- the mapping, by hand ------------------------------------------------------------------------------------


def test_a_4x4_map_in_the_crop_of_a_6x6_resize_goes_back_into_the_frame() -> None:
    amap = np.arange(16, dtype=np.float32).reshape(4, 4) + 10  # min 10
    where = placement((6, 6), resize=6, crop=4)
    assert where == Placement(width=6, height=6, left=1, top=1, crop=4)

    same = map_to_frame(amap, where, 6)  # frame = the resized image: a paste into a canvas of the minimum
    expected = np.full((6, 6), 10.0, dtype=np.float32)
    expected[1:5, 1:5] = amap
    np.testing.assert_array_equal(same, expected)

    half = map_to_frame(amap, where, 3)  # 6 -> 3: every frame pixel is the mean of a 2 x 2 block
    np.testing.assert_allclose(half, [[10.0, 10.75, 10.75],
                                      [13.0, 17.5, 14.5],
                                      [13.0, 16.75, 13.75]], atol=1e-6)
    # e.g. the centre pixel: (15 + 16 + 19 + 20) / 4 = 17.5; top middle: (10 + 10 + 11 + 12) / 4 = 10.75


def test_a_map_of_another_size_is_first_brought_to_the_crop() -> None:
    amap = np.array([[1.0, 3.0], [5.0, 7.0]], dtype=np.float32)  # a 2 x 2 map for a 4 x 4 crop
    out = map_to_frame(amap, placement((6, 6), resize=6, crop=4), 6)
    # 2 -> 4 bilinear (align_corners=False): row 0 = 1, 1.5, 2.5, 3 (edges clamp); row 1 mixes 3/4 row 0 + 1/4 row 1
    np.testing.assert_allclose(out[1, 1:5], [1.0, 1.5, 2.5, 3.0])
    np.testing.assert_allclose(out[2, 1:5], [2.0, 2.5, 3.5, 4.0])
    assert (out[0] == 1.0).all() and (out[:, 0] == 1.0).all() and (out[5] == 1.0).all()  # border = min


def test_cut_away_border_gets_the_images_lowest_score() -> None:
    """PatchCore's geometry on a 700 x 700 MVTec-sized image: 224 of 256, border of 16 px at 256."""
    rng = np.random.default_rng(0)
    amap = rng.normal(5.0, 1.0, size=(224, 224)).astype(np.float32)
    where = placement((700, 700), resize=256, crop=224)
    assert (where.width, where.height, where.left, where.top) == (256, 256, 16, 16)
    out = map_to_frame(amap, where, 256)
    border = np.ones((256, 256), dtype=bool)
    border[16:240, 16:240] = False
    assert (out[border] == amap.min()).all() and out.min() == amap.min()
    np.testing.assert_array_equal(out[16:240, 16:240], amap)  # 256 -> 256: the crop goes back 1:1
    # Another map of the same batch has its own minimum.
    np.testing.assert_array_equal(map_to_frame(amap + 3, where, 256)[border], amap.min() + 3)


def test_non_square_images_fill_the_whole_frame() -> None:
    """A 300 x 200 (W x H) image, resize 100 (shorter side) + crop 80: canvas 150 x 100 with the crop at
    (35, 10); frame 50 x 50: columns sample canvas column 3j + 1, rows average canvas rows 2i and 2i + 1."""
    where = placement((300, 200), resize=100, crop=80)
    assert where == Placement(width=150, height=100, left=35, top=10, crop=80)
    amap = np.full((80, 80), 2.0, dtype=np.float32)
    amap[-1, -1] = 1.0  # the minimum (at canvas (89, 114), a row and column the frame never samples alone)
    out = map_to_frame(amap, where, 50)
    expected = np.ones((50, 50), dtype=np.float32)
    expected[5:45, 12:38] = 2.0  # rows 10..89 -> i 5..44; columns 35..114 -> j 12..37 (3j + 1 in range)
    np.testing.assert_allclose(out, expected)


def test_masks_go_to_the_frame_with_nearest_neighbour() -> None:
    full = np.zeros((8, 8), dtype=np.uint8)
    full[1, 1] = full[2:4, 4:8] = 255  # a 1-pixel defect on an odd row/column, a 2 x 4 block
    framed = mask_to_frame(Image.fromarray(full), 4)  # nearest: frame pixel i reads full pixel 2i + 1
    expected = np.zeros((4, 4), dtype=bool)
    expected[0, 0] = True  # full (1, 1)
    expected[1, 2:4] = True  # full row 3, columns 5 and 7
    np.testing.assert_array_equal(framed, expected)


def test_frame_names() -> None:
    assert EvalFrame.parse(None).key == EvalFrame.parse("full").key == DEFAULT_FRAME == "full:256"
    assert EvalFrame.parse("FULL:512").key == "full:512" and EvalFrame.parse("native").key == "native"
    for bad in ("crop", "full:abc", "full:8"):
        with pytest.raises(ConfigError):
            EvalFrame.parse(bad)
    # Stored before frames were recorded (None) = native, labelled so.
    assert frame_identity(None)[:2] == ("native", "native geometry")
    assert frame_identity("full:256")[1] == "full image 256x256"


# --- the runner: every method on the same pixels -----------------------------------------------------------------


@dataclass
class CropConfig(MethodConfig):
    """A method that crops: 48 px of a 56 px resize (PatchCore's 224 of 256, smaller)."""

    backbone: str = "none"
    weights: str = "random"
    resize: int = 56
    crop: int = 48

    def backbone_names(self) -> tuple[str, ...]:
        return ()


@dataclass
class WholeConfig(CropConfig):
    """A method that sees the whole image at 40 px (ISSTAD's geometry, smaller)."""

    resize: int = 40
    crop: int = 40


class ToyCrop(AnomalyModel):
    """Map = the first channel of the method's own input; score = its maximum."""

    name = "toy_crop"
    Config = CropConfig

    def __init__(self, config: MethodConfig, device: str | torch.device = "cpu"):
        super().__init__(config, device)
        self.weights_source = "none (toy)"

    def fit(self, train_loader: Any, progress: Any = None) -> None:
        pass

    def predict(self, images: torch.Tensor) -> Prediction:
        maps = images[:, 0].numpy().astype(np.float32)
        return Prediction(image_scores=maps.reshape(len(maps), -1).max(axis=1), anomaly_maps=maps)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class ToyWhole(ToyCrop):
    name = "toy_whole"
    Config = WholeConfig


@pytest.fixture
def toy_geometries() -> Iterator[None]:
    register(ToyCrop)
    register(ToyWhole)
    yield
    unregister("toy_crop")
    unregister("toy_whole")


def _evaluated(monkeypatch: pytest.MonkeyPatch, demo_root: Path, method: str, frame: str) -> dict[str, Any]:
    """Run a toy method on brick and capture what the metrics saw."""
    from ad_core import runner

    seen: dict[str, Any] = {}

    def capture(labels: Any, scores: Any, masks: Any, maps: Any) -> dict[str, float | None]:
        seen.update(masks=masks, maps=maps)
        return COMPUTE_ALL(labels, scores, masks, maps)

    monkeypatch.setattr(runner.metrics, "compute_all", capture)
    spec = runner.RunSpec(method=method, dataset="demo", root=str(demo_root), categories=["brick"], frame=frame)
    result = runner.run(spec)
    seen["result"] = result
    return seen


def test_methods_of_different_geometry_are_scored_on_the_same_pixels(
    toy_geometries: None, demo_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ad_core.data import load_split, read_image, read_mask

    crop = _evaluated(monkeypatch, demo_root, "toy_crop", DEFAULT_FRAME)
    whole = _evaluated(monkeypatch, demo_root, "toy_whole", DEFAULT_FRAME)
    n = len(load_split("demo", demo_root, "brick").test)
    for seen in (crop, whole):
        assert seen["masks"].shape == seen["maps"].shape == (n, 256, 256)
        assert seen["result"].categories["brick"].anomaly_maps.shape == (n, 256, 256)  # what the worker stores
        assert seen["result"].provenance["frame"] == seen["result"].categories["brick"].frame == "full:256"
    np.testing.assert_array_equal(crop["masks"], whole["masks"])  # identical ground-truth pixels
    # ... and they are the full-resolution masks at 256 px (nearest), defects in the cropped border included.
    split = load_split("demo", demo_root, "brick")
    expected = np.stack([
        mask_to_frame(read_mask(s.mask_path, read_image(s.path).size), 256) if s.mask_path
        else np.zeros((256, 256), dtype=bool) for s in split.test
    ])
    np.testing.assert_array_equal(crop["masks"], expected)

    # Natively the two methods see different pixels: 48 x 48 of the crop vs 40 x 40 of the whole image.
    native_crop = _evaluated(monkeypatch, demo_root, "toy_crop", "native")
    native_whole = _evaluated(monkeypatch, demo_root, "toy_whole", "native")
    assert native_crop["masks"].shape == (n, 48, 48) and native_whole["masks"].shape == (n, 40, 40)
    assert native_crop["result"].provenance["frame"] == "native"
    # Image scores are the method's own in both frames.
    assert ([i.score for i in native_crop["result"].categories["brick"].images]
            == [i.score for i in crop["result"].categories["brick"].images])


def test_a_cropping_methods_map_lands_where_its_crop_came_from(
    toy_geometries: None, demo_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The toy map is the normalised red channel of the method's crop, so inside the crop the frame map must
    match the red channel of the full image at 256 px; outside it is that image's lowest value."""
    from ad_core.data import load_split, read_image
    from ad_core.frame import image_to_frame

    seen = _evaluated(monkeypatch, demo_root, "toy_crop", DEFAULT_FRAME)
    maps = seen["maps"]
    # 128 px demo images, resize 56 + crop 48: the crop covers canvas [4, 52) = frame [18.3, 237.7) px.
    inner = slice(24, 232)
    for i, sample in enumerate(load_split("demo", demo_root, "brick").test[:4]):
        # The reference goes through the same scales (128 -> 56 -> 256) without the crop.
        small = read_image(sample.path).resize((56, 56), Image.BILINEAR)
        red = image_to_frame(small, 256)[..., 0].astype(np.float64)
        r = np.corrcoef(maps[i][inner, inner].ravel(), red[inner, inner].ravel())[0, 1]
        shifts = [np.corrcoef(maps[i][inner, inner].ravel(), np.roll(red, k, axis=a)[inner, inner].ravel())[0, 1]
                  for k in (-9, 9) for a in (0, 1)]
        assert r > 0.99, (sample.path, r)
        assert max(shifts) < 0.9  # two method pixels (9 frame px) off would show: placement, not texture
        assert (maps[i][:16] == maps[i].min()).all() and (maps[i][:, -16:] == maps[i].min()).all()


# --- the frame as a comparability key ----------------------------------------------------------------------------


def _put(method: str, seed: int, value: float, frame: str, **kw: Any) -> int:
    from dashboard.sample_data import Image as Scored
    from dashboard.sample_data import store_job

    images = [Scored(f"/data/bottle/{i}.png", i % 2, "good" if i % 2 == 0 else "broken", 0.1 * i) for i in range(4)]
    return store_job(method, "mvtec", "/data/mvtec", "bottle", seed, {"image_auroc": value, "pixel_auroc": value},
                     images, frame=frame, **kw)


def test_the_leaderboard_never_pools_native_and_full_frame_results(url: str, capsys: pytest.CaptureFixture) -> None:
    from db import results
    from workers.cli import main

    _put("patchcore", 0, 0.90, "full:256")
    _put("patchcore", 1, 0.80, "full:256")
    _put("patchcore", 2, 0.50, "native")  # not a third seed of the full-frame row
    _put("reconpatch", 0, 0.70, "native")

    board = results.leaderboard("mvtec", "pixel_auroc")  # default: the full-image frame
    assert (board.eval_frame, board.eval_frame_label, board.other_frames) == (
        "full:256", "full image 256x256", ["native geometry"])
    assert list(board.mean.index) == ["patchcore (fast)"] and board.n.at["patchcore (fast)", "bottle"] == 2
    assert board.mean.at["patchcore (fast)", "bottle"] == pytest.approx(0.85)
    assert "evaluation frame: full image 256x256" in board.caption() and set(board.long()["frame"]) == {"full:256"}

    native = results.leaderboard("mvtec", "pixel_auroc", eval_frame="native")
    assert native.mean["bottle"].to_dict() == pytest.approx({"reconpatch (fast)": 0.70, "patchcore (fast)": 0.50})
    assert native.other_frames == ["full image 256x256"] and "evaluation frame: native geometry" in native.caption()
    with pytest.raises(ValueError, match="no results in evaluation frame 'full:512'"):
        results.leaderboard("mvtec", "pixel_auroc", eval_frame="full:512")

    # iad export: one frame per table, the others named in a note; CSV rows carry their frame.
    assert main(["export", "--dataset", "mvtec", "--metric", "pixel_auroc", "--format", "csv", "--frame", "native"]) == 0
    out, err = capsys.readouterr()
    assert "results in other frames (full image 256x256)" in err
    rows = [line.split(",") for line in out.strip().splitlines()]
    assert rows[0][-1] == "frame" and {r[-1] for r in rows[1:]} == {"native"} and len(rows) == 1 + 2 * 2


def test_results_stored_before_frames_existed_are_native(url: str) -> None:
    """A database from before the frame: its jobs get 'native' from the migration, never the default frame."""
    from alembic import command

    from db import queries, results
    from db.session import alembic_config

    job_id = _put("patchcore", 0, 0.75, "full:256")
    command.downgrade(alembic_config(url), "0002")  # the schema before frames: the column is gone
    command.upgrade(alembic_config(url), "head")
    assert queries.get_job(job_id, url=url).frame == "native"
    board = results.leaderboard("mvtec", "pixel_auroc")
    assert (board.eval_frame, board.other_frames) == ("native", [])  # no default-frame results: the old ones
    assert "evaluation frame: native geometry" in board.caption()

    new_id = _put("patchcore", 0, 0.60, "full:256")
    board = results.leaderboard("mvtec", "pixel_auroc")
    assert board.eval_frame == "full:256" and board.other_frames == ["native geometry"]
    assert board.mean.at["patchcore (fast)", "bottle"] == pytest.approx(0.60)  # not a re-run of the old result
    assert queries.get_job(new_id, url=url).frame == "full:256"


def test_imbalance_points_and_drop_stay_in_one_frame(url: str) -> None:
    from ad_core.analysis import imbalance as imb
    from db import results

    tail = {"kind": "long_tail", "profile": "exp", "ratio": 100.0, "tail_fraction": 0.6, "n_max": None,
            "min_count": 1, "list": None, "noisy": "drop", "classes": ["bottle"], "seed": None}
    _put("patchcore", 0, 0.60, "full:256", split=tail, split_hash="a" * 64, n_train=5)
    _put("patchcore", 0, 0.95, "native", split_hash="b" * 64, n_train=200)  # standard split, other frame
    frame = results.results_frame(dataset="mvtec", metrics=["pixel_auroc"])
    points = imb.select_points(frame, "pixel_auroc", dataset="mvtec")
    assert points.eval_frame == "full:256" and points.frame["value"].tolist() == [0.60]
    board = imb.group_table(points)
    assert "evaluation frame: full image 256x256" in board.caption()
    drop = imb.drop_table(frame, "pixel_auroc", dataset="mvtec")
    # The only standard result is native: it is not the full-frame variant's "full" number.
    assert drop.eval_frame == "full:256" and drop.table["full"].isna().all() and len(drop.missing) == 1


def test_iad_run_records_the_frame(demo_root: Path, tmp_path: Path) -> None:
    import json

    from workers.cli import main

    out = tmp_path / "r.json"
    code = main(["run", "--method", "patchcore", "--dataset", "demo", "--root", str(demo_root), "--category", "grass",
                 "--preset", "fast", "--set", "resize=72", "--set", "crop=64", "--frame", "native", "--json", str(out)])
    doc = json.loads(out.read_text())
    assert code == 0 and doc["frame"] == doc["provenance"]["frame"] == doc["spec"]["frame"] == "native"
    assert main(["run", "--method", "patchcore", "--dataset", "demo", "--root", str(demo_root), "--frame", "full:8"]) == 2
