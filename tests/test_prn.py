"""PRN: prototypes and residuals, multi-size attention, anomaly generation, losses, the few-shot split, determinism,
persistence and config validation. Unit tests use 32-64 px images and the bundled EfficientNet-Lite0 weights
(seconds on a CPU); the real-data test on MVTec AD bottle is marked slow."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from metric_reference import assert_metrics_match_outputs

from ad_core.components import focal_loss, perlin_mask, perlin_noise, smooth_l1_loss
from ad_core.methods.base import AnomalyModel, ConfigError, get_method
from ad_core.methods.prn import (
    PRN,
    AnomalyGenerator,
    GenerationSettings,
    MultiSizeAttention,
    PRNConfig,
    PRNetwork,
    Prototypes,
    assign_prototypes,
    foreground_mask,
    plan_epoch,
    residuals,
    topk_mean,
)
from ad_core.methods.prn.network import _SizeAttention, patchify, unpatchify
from ad_core.runner import RunSpec, check_pairing, run
from ad_core.splits import SplitSpec

# 64 px: level sides 16/8/4, so attention divisors (1, 2, 4).
TINY = {"resize": 64, "crop": 64, "epochs": 2, "attention_divisors": (1, 2, 4), "train_batch_size": 8, "topk": 10}


def few_shot_spec(demo_root, seed: int = 3, split: str = "few_shot:k=2", **overrides) -> RunSpec:
    return RunSpec(method="prn", dataset="demo", root=str(demo_root), categories=["brick"], preset="fast",
                   seed=seed, overrides={**TINY, **overrides}, split=SplitSpec.parse(split).to_dict())  # fmt: skip


# --- prototypes and residuals -----------------------------------------------------------------------------
def test_prototype_assignment_and_residuals_by_hand() -> None:
    prototypes = torch.tensor([[[[0.0, 0.0], [0.0, 0.0]]], [[[1.0, 1.0], [1.0, 2.0]]], [[[3.0, 3.0], [3.0, 3.0]]]])
    features = torch.tensor([[[[1.0, 1.0], [1.0, 1.0]]], [[[3.0, 3.0], [3.0, 2.0]]]])  # [2, 1, 2, 2]
    # image 0: squared distances 4 (p0), 1 (p1), 16 (p2) -> p1; image 1: 35, 12, 1 -> p2
    assert assign_prototypes(features, prototypes).tolist() == [1, 2]
    expected = torch.tensor([[[[0.0, 0.0], [0.0, 1.0]]], [[[0.0, 0.0], [0.0, 1.0]]]])
    assert torch.equal(residuals(features, prototypes), expected)


def test_prototypes_are_the_kmeans_centroids_of_whole_maps() -> None:
    # Two well-separated groups of maps: the two prototypes are the group means (in some order).
    g = torch.Generator().manual_seed(0)
    low = torch.rand(5, 2, 3, 3, generator=g) * 0.1
    high = 5 + torch.rand(4, 2, 3, 3, generator=g) * 0.1
    protos = Prototypes.fit([torch.cat([low, high])], count=2, seed=0, n_init=3)
    found = sorted(protos.maps[0], key=lambda m: float(m.mean()))
    torch.testing.assert_close(found[0], low.mean(0))
    torch.testing.assert_close(found[1], high.mean(0))
    # more prototypes than maps: one per map
    assert Prototypes.fit([low], count=10, seed=0).maps[0].shape == (5, 2, 3, 3)


# --- multi-size attention ---------------------------------------------------------------------------------
def test_patchify_round_trip_and_token_layout() -> None:
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    tokens = patchify(x, 2)
    assert tokens.shape == (2, 4, 3 * 2 * 2)
    # token 1 = the top-right 2x2 patch of every channel
    assert torch.equal(tokens[0, 1].reshape(3, 2, 2), x[0, :, 0:2, 2:4])
    assert torch.equal(unpatchify(tokens, 2, 3, 4, 4), x)


def test_attention_on_one_whole_map_token_is_its_value_projection() -> None:
    # One token (patch side = the map side): softmax over one key is 1, so the output is v = w_v x + b_v.
    torch.manual_seed(0)
    branch = _SizeAttention(channels=2, size=4)
    x = torch.randn(3, 2, 4, 4)
    expected = unpatchify(patchify(x, 4) * branch.weight[2] + branch.bias[2], 4, 2, 4, 4)
    torch.testing.assert_close(branch(x), expected)


def test_attention_by_hand_for_two_tokens() -> None:
    branch = _SizeAttention(channels=1, size=1)  # 1x2 map -> 2 tokens of dim 1
    with torch.no_grad():
        branch.weight.copy_(torch.ones(3, 1))
        branch.bias.zero_()
    x = torch.tensor([[[[1.0, 2.0]]]])
    # q = k = v = x; scores q_i k_j / dim; softmax over j
    w = torch.softmax(torch.tensor([[1.0, 2.0], [2.0, 4.0]]), dim=1)
    expected = (w @ torch.tensor([1.0, 2.0])).reshape(1, 1, 1, 2)
    torch.testing.assert_close(branch(x), expected)


def test_each_attention_patch_size_changes_the_output() -> None:
    torch.manual_seed(0)
    block = MultiSizeAttention(channels=4, height=8, divisors=(1, 2, 4, 8)).eval()
    assert [b.size for b in block.branches] == [8, 4, 2, 1]
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        base = block(x)
        for i in range(len(block.branches)):
            changed = copy.deepcopy(block)
            changed.branches[i].weight.add_(0.5)
            changed.branches[i].bias.add_(0.5)
            assert not torch.allclose(changed(x), base), f"patch size {block.branches[i].size} has no effect"
            # and the other sizes' outputs are what they were: only branch i differs
            for j, (a, b) in enumerate(zip(changed.branches, block.branches, strict=True)):
                assert torch.equal(a(x), b(x)) == (i != j)


def test_attention_rejects_sizes_that_do_not_divide_the_map() -> None:
    with pytest.raises(ValueError, match="do not divide"):
        MultiSizeAttention(channels=2, height=6, divisors=(1, 4))


def test_network_maps_features_to_full_resolution_logits() -> None:
    torch.manual_seed(0)
    net = PRNetwork([8, 12, 16, 20], [16, 8, 4], attention_blocks=2, divisors=(1, 2, 4)).eval()
    features = [torch.randn(2, c, s, s) for c, s in zip([8, 12, 16, 20], [16, 8, 4, 2], strict=True)]
    out = net(features, [f**2 for f in features[:3]])
    assert out.shape == (2, 1, 64, 64) and torch.isfinite(out).all()


# --- anomaly generation ---------------------------------------------------------------------------------------
def object_image(size: int = 64, seed: int = 0) -> np.ndarray:
    """A dark textured disc on a white background, [H, W, 3] float32 in [0, 1] (like MVTec bottle)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    disc = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2)[..., None]
    texture = 0.15 + 0.2 * rng.random((size, size, 3))
    return np.where(disc, texture, 0.95).astype(np.float32)


def toy_generator(size: int = 64, **settings) -> AnomalyGenerator:
    from ad_core.components import TextureSource

    normals = np.stack([object_image(size, s) for s in range(4)])
    anomalies = np.stack([object_image(size, 10 + s) for s in range(2)])
    masks = np.zeros((2, size, size), dtype=bool)
    masks[0, 20:30, 25:40] = True
    masks[1, 5:12, 5:12] = True  # on the background: copy-paste must move it into the foreground
    masks[1, 40:44, 40:50] = True
    anomalies[masks] = 0.9 - anomalies[masks]
    return AnomalyGenerator(normals, anomalies, masks, GenerationSettings(**settings), TextureSource("skimage"))


@pytest.mark.parametrize("kind", ["copy_paste", "perlin"])
def test_generated_masks_are_exactly_the_changed_pixels(kind: str) -> None:
    generator = toy_generator()
    rng = np.random.default_rng(0)
    made_kinds = set()
    for i in range(30):
        made = generator.make(kind, i % 2, rng)
        made_kinds.add(made.kind)
        clean = generator.normals[made.base]
        changed = (made.image != clean).any(axis=-1)
        assert made.mask.dtype == bool and np.array_equal(changed, made.mask)
        assert made.mask.any()
        assert np.abs(made.image - clean).max(axis=-1)[made.mask].min() > generator.settings.min_change
        assert made.image.min() >= 0 and made.image.max() <= 1
    assert made_kinds == {kind}


def test_copy_paste_lands_in_the_foreground() -> None:
    from scipy import ndimage

    generator = toy_generator(paste_ops=0)  # no augmentation: the regions keep their shapes
    rng = np.random.default_rng(1)
    for _ in range(10):
        made = generator.make("copy_paste", 1, rng)  # anomaly 1's regions are mostly outside the disc: moved
        foreground = generator.foregrounds[made.base]
        assert not made.mask[5:12, 5:12].all()  # not pasted in place
        labels, count = ndimage.label(made.mask, structure=np.ones((3, 3)))
        for centre in ndimage.center_of_mass(made.mask, labels, range(1, count + 1)):
            assert foreground[round(centre[0]), round(centre[1])]  # every region is centred on the object


def test_model_batches_keep_exact_loader_values_outside_the_mask(demo_root) -> None:
    model = PRN(PRNConfig.build("fast", **TINY))
    generator = toy_generator()
    normals = torch.stack([model._normalise(x) for x in generator.normals])
    anomalies = torch.stack([model._normalise(x) for x in generator.anomalies])
    generator.normals = generator.normals[:1].copy()  # one normal image: every sample's base is 0
    generator.foregrounds = generator.foregrounds[:1]
    entries = [("normal", 0), ("copy_paste", 0), ("perlin", -1), ("real", 1)]
    images, masks, kinds = model.make_batch(generator, entries, normals, anomalies, np.random.default_rng(0))
    assert kinds == ["normal", "copy_paste", "perlin", "real"] and images.shape == (4, 3, 64, 64)
    assert torch.equal(images[0], normals[0]) and not masks[0].any()
    for i in (1, 2):
        assert torch.equal((images[i] != normals[0]).any(dim=0), masks[i, 0].bool())
    assert torch.equal(masks[3, 0].bool(), torch.from_numpy(generator.anomaly_masks[1]))


def test_foreground_of_an_object_and_of_a_texture() -> None:
    image = object_image(64)
    fg = foreground_mask(image)
    yy, xx = np.mgrid[:64, :64]
    disc = (yy - 32) ** 2 + (xx - 32) ** 2 < (64 / 3) ** 2
    assert (fg == disc).mean() > 0.98
    texture = np.random.default_rng(0).random((64, 64, 3)).astype(np.float32)
    assert foreground_mask(texture).all()


def test_epoch_plan_follows_the_reference_composition() -> None:
    settings = GenerationSettings(real_reuse=5)
    plan = plan_epoch(40, 2, settings, np.random.default_rng(0))
    kinds = [k for k, _ in plan]
    assert len(plan) == 80 and kinds.count("normal") == 40 and kinds.count("perlin") == 20
    assert kinds.count("real") == 10 and kinds.count("copy_paste") == 10  # 2 anomalies x 5 reuses, then copy-paste
    assert sorted(i for k, i in plan if k == "normal") == list(range(40))
    assert sorted(i for k, i in plan if k == "real") == [0] * 5 + [1] * 5
    assert plan != plan_epoch(40, 2, settings, np.random.default_rng(1))  # shuffled with the generator


def test_perlin_noise_and_mask_are_seeded() -> None:
    noise = perlin_noise((64, 48), (4, 2), np.random.default_rng(0))
    assert noise.shape == (64, 48) and np.abs(noise).max() <= math.sqrt(2) / 2 * 2
    assert noise[0, 0] == 0.0  # lattice points have zero noise
    a = perlin_mask((64, 64), np.random.default_rng(5))
    b = perlin_mask((64, 64), np.random.default_rng(5))
    assert a.dtype == bool and np.array_equal(a, b)


# --- losses ---------------------------------------------------------------------------------------------------------
def test_focal_and_smooth_l1_by_hand() -> None:
    prob = torch.tensor([0.9, 0.2, 0.6, 0.05])
    target = torch.tensor([1.0, 0.0, 0.0, 1.0])
    # smooth L1 (beta 1): d = 0.1, 0.2, 0.6, 0.95 (all < 1) -> 0.5 d^2
    assert float(smooth_l1_loss(prob, target)) == pytest.approx((0.005 + 0.02 + 0.18 + 0.45125) / 4)
    # focal, no smoothing: -a (1 - p_t)^gamma ln p_t with p_t = 0.9, 0.8, 0.4, 0.05 and a = 0.5
    p_t = [0.9, 0.8, 0.4, 0.05]
    expected = sum(-0.5 * (1 - p) ** 4 * math.log(p) for p in p_t) / 4
    assert float(focal_loss(prob, target, alpha=0.5, gamma=4.0, smooth=0.0)) == pytest.approx(expected, rel=1e-6)
    # alpha weighs anomalous pixels, 1 - alpha normal ones
    weights = [0.8, 0.2, 0.2, 0.8]
    expected = sum(-w * (1 - p) ** 2 * math.log(p) for w, p in zip(weights, p_t, strict=True)) / 4
    assert float(focal_loss(prob, target, alpha=0.8, gamma=2.0, smooth=0.0)) == pytest.approx(expected, rel=1e-6)
    # label smoothing s (reference): p_t = (1 - s) p_y + s (1 - p_y) + s
    s = 0.01
    p_t = [(1 - s) * p + s * (1 - p) + s for p in (0.9, 0.8, 0.4, 0.05)]
    expected = sum(-0.5 * (1 - p) ** 4 * math.log(p) for p in p_t) / 4
    assert float(focal_loss(prob, target, smooth=s)) == pytest.approx(expected, rel=1e-6)


def test_model_loss_is_smooth_l1_plus_lambda_focal() -> None:
    model = PRN(PRNConfig.build("fast", **TINY, focal_weight=5.0))
    prob = torch.tensor([0.9, 0.2, 0.6, 0.05]).view(1, 1, 2, 2)
    mask = torch.tensor([1.0, 0.0, 0.0, 1.0]).view(1, 1, 2, 2)
    loss, parts = model.loss(torch.logit(prob), mask)
    expected = float(smooth_l1_loss(prob, mask)) + 5.0 * float(focal_loss(prob, mask, 0.5, 4.0, 1e-5))
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert set(parts) == {"l1", "focal"}


def test_image_score_is_the_mean_of_the_top_k_pixels() -> None:
    maps = torch.zeros(2, 4, 4)
    maps[0].view(-1)[:3] = torch.tensor([0.9, 0.5, 0.1])
    assert topk_mean(maps, 2).tolist() == pytest.approx([0.7, 0.0])
    assert topk_mean(maps, 100).tolist() == pytest.approx([1.5 / 16, 0.0])  # k larger than the map: all pixels


# --- the split, runner, determinism and persistence ----------------------------------------------------------------
def test_prn_is_few_shot_supervised_and_needs_labelled_anomalies(demo_root) -> None:
    assert get_method("prn").learning_type == "few_shot_supervised"
    with pytest.raises(ConfigError, match="few_shot"):
        check_pairing(PRN, SplitSpec(), ["brick"])
    with pytest.raises(ConfigError, match="labelled anomalies"):
        PRN.check_data(PRNConfig.build("fast"), {"brick": {"train": 10, "train_anomalous": 0}})
    PRN.check_data(PRNConfig.build("fast"), {"brick": {"train": 12, "train_anomalous": 2}})


@pytest.mark.parametrize("split", ["few_shot:k=3", "few_shot:k=2,setting=hard"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_split_never_lets_a_training_anomaly_into_the_test_set(demo_root, split: str, seed: int) -> None:
    plan = few_shot_spec(demo_root, seed=seed, split=split).prepare()
    part = plan.splits["brick"]
    trained = {s.path for s in part.train if s.label == 1}
    assert len(trained) == int(split.split("k=")[1][0])
    assert trained.isdisjoint(s.path for s in part.test)
    assert all(s.mask_path for s in part.train if s.label == 1)


@pytest.fixture(scope="module")
def fitted_run(demo_root):
    """One tiny PRN run through the runner, with the paths its fit saw recorded."""
    seen: list[tuple[str, int]] = []
    original = PRN.fit

    def spy(self, loader, progress=lambda f, m: None):
        seen.extend((str(p), int(lab)) for b in loader for p, lab in zip(b["path"], b["label"], strict=True))
        return original(self, loader, progress)

    PRN.fit = spy
    try:
        result = run(few_shot_spec(demo_root), keep_maps=True)
    finally:
        PRN.fit = original
    return result, seen


def test_runner_trains_on_the_split_anomalies_and_tests_without_them(demo_root, fitted_run) -> None:
    result, seen = fitted_run
    brick = result.categories["brick"]
    trained = {p for p, label in seen if label == 1}
    assert len(trained) == 2
    assert trained.isdisjoint(i.path for i in brick.images)
    assert len(brick.train_anomalies) == 2  # the result records the anomalies the fit saw
    assert all(any(p.endswith("/" + q) for q in brick.train_anomalies) for p in trained)
    assert brick.anomaly_maps.shape == (len(brick.images), 256, 256) and np.isfinite(brick.anomaly_maps).all()
    assert_metrics_match_outputs(few_shot_spec(demo_root), brick)  # the metrics of these maps and masks
    details = result.units[0].details
    assert details["generation"]["real_anomalies"] == 2 and details["generation"]["generated"]["perlin"] > 0
    assert "scikit-image" in details["generation"]["texture_source"]


def test_same_seed_same_model_other_seed_other_model(demo_root, fitted_run) -> None:
    first = fitted_run[0].categories["brick"]
    again = run(few_shot_spec(demo_root), keep_maps=True).categories["brick"]
    np.testing.assert_array_equal(first.anomaly_maps, again.anomaly_maps)
    assert first.metrics == again.metrics
    other = run(few_shot_spec(demo_root, seed=4), keep_maps=True).categories["brick"]
    assert [i.path for i in other.images] != [i.path for i in first.images] or not np.array_equal(
        other.anomaly_maps, first.anomaly_maps
    )


def test_save_load_round_trip(demo_root, tmp_path) -> None:
    from ad_core.data import ImageDataset

    spec = few_shot_spec(demo_root, epochs=1)
    plan = spec.prepare()
    torch.manual_seed(0)
    model = PRN(plan.config)
    prep = model.preprocess()
    loader = torch.utils.data.DataLoader(ImageDataset(plan.splits["brick"].train, prep), batch_size=4)
    model.fit(loader)
    images = next(iter(torch.utils.data.DataLoader(ImageDataset(plan.splits["brick"].test, prep), batch_size=4)))
    before = model.predict(images["image"])
    model.save(tmp_path / "prn.pt")
    loaded = AnomalyModel.load(tmp_path / "prn.pt")
    after = loaded.predict(images["image"])
    assert isinstance(loaded, PRN) and loaded.generation_info == model.generation_info
    np.testing.assert_array_equal(before.anomaly_maps, after.anomaly_maps)
    np.testing.assert_array_equal(before.image_scores, after.image_scores)
    # maps come back at the resolution of the input
    bigger = torch.nn.functional.interpolate(images["image"], size=(96, 96), mode="bilinear")
    assert loaded.predict(bigger).anomaly_maps.shape == (len(bigger), 96, 96)


def test_predict_before_fit_raises() -> None:
    with pytest.raises(RuntimeError, match="before fit"):
        PRN(PRNConfig.build("fast", **TINY)).predict(torch.zeros(1, 3, 64, 64))


# --- config ------------------------------------------------------------------------------------------------------
def test_paper_network_matches_the_reference_sizes() -> None:
    """ResNet-18 layer1-4 at 256 px: sides 64/32/16, attention patch sides H, H/2, H/4, H/8 at every scale."""
    model = PRN(PRNConfig.build("paper", weights="random"))
    assert model.backbone.channels == [64, 128, 256, 512] and model.backbone.reductions == [4, 8, 16, 32]
    assert "NOT pretrained" in model.weights_source
    for scale, side in zip(model.net.attention, (64, 32, 16), strict=True):
        assert len(scale) == 3  # blocks per scale
        assert [b.size for b in scale[0].branches] == [side, side // 2, side // 4, side // 8]


def test_presets_build() -> None:
    paper = PRNConfig.build("paper")
    assert (paper.backbone, paper.crop, paper.epochs, paper.lr, paper.weight_decay) == ("resnet18.tv_in1k", 256, 700, 1e-4, 1e-2)
    assert (paper.focal_weight, paper.focal_alpha, paper.focal_gamma, paper.topk) == (5.0, 0.5, 4.0, 100)
    assert paper.attention_blocks == 3 and paper.attention_divisors == (1, 2, 4, 8)
    fast = PRNConfig.build("fast")
    assert fast.backbone == "tf_efficientnet_lite0" and fast.weights == "bundled" and fast.crop == 128
    assert PRNConfig.from_dict(fast.to_dict()) == fast


@pytest.mark.parametrize(
    "overrides",
    [
        {"crop": 96},  # level-3 side 6: divisor 8 does not divide it
        {"attention_divisors": ()},
        {"levels": (1, 2, 4, 5)},
        {"prototype_ratio": 0.0},
        {"epochs": 0},
        {"focal_alpha": 1.5},
        {"foreground": "magic"},
        {"texture_source": "/nonexistent/dtd"},
        {"perlin_min_exponent": 6},
        {"paste_ops": 9},
    ],
)
def test_invalid_values_raise(overrides: dict) -> None:
    with pytest.raises(ConfigError):
        PRNConfig.build("fast", **overrides)


# --- real data ----------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_prn_fast_on_bottle_few_shot(mvtec_bottle_root) -> None:
    """PRN `fast` (3 epochs instead of 5 to keep the test short) on MVTec AD bottle, few_shot k=10, seed 0."""
    spec = RunSpec(method="prn", dataset="mvtec", root=str(mvtec_bottle_root), categories=["bottle"], preset="fast",
                   seed=0, overrides={"epochs": 3}, split=SplitSpec.parse("few_shot:k=10").to_dict())  # fmt: skip
    result = run(spec)
    m = result.categories["bottle"].metrics
    assert result.categories["bottle"].counts["test"] == 73
    assert m["image_auroc"] >= 0.90 and m["pixel_auroc"] >= 0.90 and m["aupro"] >= 0.60, m
