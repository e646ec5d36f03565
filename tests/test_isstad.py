"""ISSTAD: corruption labels, training losses, scoring definition, persistence and config validation.

Everything runs on tiny ViTs and 32-48 px images (a few seconds on a CPU).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import correlate, gaussian_filter

from ad_core.components import ssim
from ad_core.errors import WeightsError
from ad_core.methods.base import AnomalyModel, ConfigError, get_method
from ad_core.methods.isstad import (
    ISSTAD,
    CorruptionSettings,
    EncoderWeightsError,
    ISSTADConfig,
    IsstadMAE,
    corrupt,
    foreground_box,
    isstad_scores,
    load_pretrained_encoder,
    random_resized_crop_flip,
    shape_mask,
)
from ad_core.methods.isstad import model as isstad_model

TINY = dict(
    resize=32,
    crop=32,
    patch_size=8,
    encoder_dim=32,
    encoder_depth=2,
    encoder_heads=2,
    decoder_dim=32,
    decoder_heads=2,
    stage1_decoder_depth=1,
    decoder_depth=2,
    stage1_batch_size=4,
    stage2_batch_size=4,
    batch_size=4,
)


def object_image(size: int = 48, seed: int = 0) -> torch.Tensor:
    """A bright textured disc on a dark background, [3,H,W] in [0,1]."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    disc = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2).float()
    texture = 0.5 + 0.3 * torch.rand(3, size, size, generator=g)
    return (disc * texture + (1 - disc) * 0.05).clamp(0, 1)


def normalised(unit: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor((0.485, 0.456, 0.406)).view(-1, 3, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225)).view(-1, 3, 1, 1)
    return (unit - mean) / std


def loader_of(images: torch.Tensor, batch: int = 4, category: str = "bottle") -> list[dict]:
    """Batches as ImageDataset + torch's default collate make them (string fields become lists)."""
    return [
        {
            "image": normalised(images[i : i + batch]),
            "path": [f"/data/demo/train/good/{j}.png" for j in range(len(images[i : i + batch]))],
            "category": [category] * len(images[i : i + batch]),
        }
        for i in range(0, len(images), batch)
    ]


def train_images(n: int = 8, size: int = 32) -> torch.Tensor:
    return torch.stack([object_image(size, seed) for seed in range(n)])


@pytest.fixture(scope="module")
def fitted() -> ISSTAD:
    torch.manual_seed(0)
    config = ISSTADConfig.build(
        "fast",
        **TINY,
        stage1_epochs=12,
        stage1_base_lr=0.2,  # tiny overfit run: a high lr, no random crops
        stage1_crop_min_scale=1.0,
        stage2_epochs=12,
        stage2_cosine_period=12,
    )
    model = ISSTAD(config)
    model.fit(loader_of(train_images()))
    return model


# --- corruption -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("remove_black", [False, True])
@pytest.mark.parametrize("area_limit", [True, False])
def test_corruption_label_is_exactly_the_changed_pixels(area_limit: bool, remove_black: bool) -> None:
    settings = CorruptionSettings(max_shapes=3, area_limit=area_limit, remove_black=remove_black)
    image = object_image()
    rng = np.random.default_rng(1)
    nonempty = 0
    for _ in range(40):
        corrupted, label = corrupt(image, rng, settings, force=True)
        assert corrupted.shape == image.shape and label.shape == image.shape[1:]
        assert label.dtype == torch.long and set(label.unique().tolist()) <= {0, 1}
        changed = (corrupted != image).any(dim=0)
        assert torch.equal(changed, label.bool())
        assert bool(((corrupted - image).abs().amax(0)[label.bool()] > settings.min_change).all())
        assert float(corrupted.min()) >= 0 and float(corrupted.max()) <= 1
        nonempty += int(label.any())
    assert nonempty >= 30  # almost every forced corruption changes something


def test_corruption_probability_and_determinism() -> None:
    image = object_image()
    clean, label = corrupt(image, np.random.default_rng(0), CorruptionSettings(probability=0.0))
    assert torch.equal(clean, image) and not label.any()
    a = [corrupt(image, np.random.default_rng(7))[1] for _ in range(2)]
    assert torch.equal(a[0], a[1])
    rng = np.random.default_rng(3)
    corrupted_fraction = np.mean([bool(corrupt(image, rng)[1].any()) for _ in range(150)])
    assert 0.5 < corrupted_fraction < 0.8  # probability 2/3 (a few forced draws may change nothing)


def test_shapes_stay_in_the_foreground_box() -> None:
    image = object_image(64)
    box = foreground_box(image)
    x0, y0, x1, y1 = box
    assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
    assert (x0, y0, x1, y1) != (0, 0, 64, 64)  # the disc does not fill the image
    rng = np.random.default_rng(0)
    for _ in range(20):
        mask = shape_mask((64, 64), box, 3, rng)
        ys, xs = np.nonzero(mask)
        assert len(ys) > 0
        assert xs.min() >= x0 and ys.min() >= y0 and xs.max() <= x1 and ys.max() <= y1


def test_stage1_crop_zooms_and_flips_and_keeps_shape_and_range() -> None:
    images = train_images(3)
    out = random_resized_crop_flip(images, np.random.default_rng(0))
    assert out.shape == images.shape and float(out.min()) >= 0 and float(out.max()) <= 1
    assert not torch.allclose(out, images, atol=1e-2)  # default scale: zoomed crops
    # a crop of the whole image (scale 1, aspect 1) gives back the image, horizontally flipped or not
    images = train_images(8)
    whole = random_resized_crop_flip(images, np.random.default_rng(0), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    flipped = []
    for got, image in zip(whole, images, strict=True):
        same, mirrored = torch.allclose(got, image, atol=1e-5), torch.allclose(got, image.flip(-1), atol=1e-5)
        assert same or mirrored
        flipped.append(mirrored)
    assert any(flipped) and not all(flipped)  # the flip happens with probability 1/2


# --- network and losses -----------------------------------------------------------------------------------
def test_mae_shapes_and_masked_loss() -> None:
    torch.manual_seed(0)
    net = IsstadMAE(32, 8, 32, 1, 2, 32, 3, 2, 2)
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(net.unpatchify(net.patchify(x)), x)
    loss, pred, mask = net.forward_mae(x, 0.75, generator=torch.Generator().manual_seed(0))
    assert pred.shape == (2, 16, 8 * 8 * 3) and mask.shape == (2, 16)
    assert mask.sum(1).tolist() == [12.0, 12.0]
    expected = (((pred - net.patchify(x)) ** 2).mean(-1) * mask).sum() / mask.sum()
    assert torch.allclose(loss, expected)
    rec, logits = net.forward_stage2(x)
    assert rec.shape == (2, 3, 32, 32) and len(logits) == 3 and logits[0].shape == (2, 2, 32, 32)


def test_loss_is_finite_and_decreases(fitted: ISSTAD) -> None:
    stage1 = [h["loss"] for h in fitted.history if h["stage"] == 1]
    stage2 = [h["loss"] for h in fitted.history if h["stage"] == 2]
    assert len(stage1) == 12 and len(stage2) == 12
    assert all(math.isfinite(v) for v in stage1 + stage2)
    assert np.mean(stage1[-3:]) < stage1[0]
    assert np.mean(stage2[-3:]) < stage2[0]
    assert fitted.weights_source == "random (NOT pretrained)"


@pytest.mark.parametrize("repair_target", ["clean", "corrupted"])
def test_repair_target_is_the_target_the_reconstruction_losses_receive(
    fitted: ISSTAD, monkeypatch, repair_target: str
) -> None:
    """MSE and SSIM get (reconstruction of the corrupted input, target): the clean image for "clean", the
    corrupted network input for "corrupted" (the official code)."""
    clean = (train_images(2) - 0.5) / 0.5
    corrupted = clean.clone()
    corrupted[:, :, 8:16, 8:16] = 1.0
    labels = torch.zeros(2, 32, 32, dtype=torch.long)
    labels[:, 8:16, 8:16] = 1
    received: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {"mse": [], "ssim": []}
    real_mse, real_ssim = F.mse_loss, isstad_model.ssim

    def recording_mse(a, b, *args, **kwargs):
        received["mse"].append((a.detach().clone(), b.detach().clone()))
        return real_mse(a, b, *args, **kwargs)

    def recording_ssim(a, b, *args, **kwargs):
        received["ssim"].append((a.detach().clone(), b.detach().clone()))
        return real_ssim(a, b, *args, **kwargs)

    monkeypatch.setattr(isstad_model.F, "mse_loss", recording_mse)
    monkeypatch.setattr(isstad_model, "ssim", recording_ssim)
    monkeypatch.setattr(fitted.config, "repair_target", repair_target)
    with torch.no_grad():
        expected_rec, _ = fitted.net.forward_stage2(corrupted)
        _, parts = fitted.stage2_loss(corrupted, clean, labels)
    target, other = (clean, corrupted) if repair_target == "clean" else (corrupted, clean)
    assert len(received["mse"]) == 1 and len(received["ssim"]) == 1
    for rec, got in received["mse"] + received["ssim"]:
        assert torch.equal(got, target)
        torch.testing.assert_close(rec, expected_rec, rtol=1e-5, atol=1e-6)
    expected_mse = float(((expected_rec - target) ** 2).mean())
    assert parts["rec"] == pytest.approx(expected_mse, rel=1e-5)
    assert parts["rec"] != pytest.approx(float(((expected_rec - other) ** 2).mean()), rel=1e-3)
    assert parts["ssim"] == pytest.approx(1 - float(ssim(expected_rec, target)), rel=1e-5, abs=1e-7)


def pytorch_ssim_reference(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5) -> float:
    """pytorch-ssim's SSIM (used by the official ISSTAD code, util/simm.py), written out independently in
    float64 numpy: a 2-D Gaussian window (outer product of the normalised 1-D one), zero padding, C1 = 0.01²,
    C2 = 0.03², mean over pixels, channels and images."""
    g = np.array([math.exp(-((x - window // 2) ** 2) / (2 * sigma**2)) for x in range(window)])
    w = np.outer(g / g.sum(), g / g.sum())

    def blur(x: np.ndarray) -> np.ndarray:
        return correlate(x, w, mode="constant", cval=0.0)

    values = []
    pairs = zip(
        a.double().numpy().reshape(-1, *a.shape[-2:]),
        b.double().numpy().reshape(-1, *b.shape[-2:]),
        strict=True,
    )
    for x, y in pairs:
        mx, my = blur(x), blur(y)
        vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
        c1, c2 = 0.01**2, 0.03**2
        values.append(((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(np.mean(values))


def test_ssim_matches_the_official_pytorch_ssim_formula() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 3, 32, 40, generator=g) * 2 - 1  # the stage-2 input space [-1, 1]
    similar = (a + 0.3 * torch.randn(a.shape, generator=g)).clamp(-1, 1)
    unrelated = torch.rand(2, 3, 32, 40, generator=g) * 2 - 1
    for b in (similar, unrelated):
        assert float(ssim(a, b)) == pytest.approx(pytorch_ssim_reference(a, b), abs=1e-6)
    assert float(ssim(a, a)) == pytest.approx(1.0, abs=1e-6)
    # the two pairs really are different cases (a high and a near-zero SSIM)
    assert pytorch_ssim_reference(a, similar) > 0.4 and abs(pytorch_ssim_reference(a, unrelated)) < 0.05


# --- stage-2 token order ------------------------------------------------------------------------------
def stage2_reference(net: IsstadMAE, imgs: torch.Tensor, perm: torch.Tensor | None = None):
    """The stage-2 forward written out: all patch tokens through the encoder (permuted by `perm` [N, L] after
    the position embedding and never restored, as the official code's ratio-0 masking call), then the decoder
    with its unpermuted position embedding; every decoder slot i is unpatchified to patch i."""
    x = net.patch_embed(imgs) + net.pos_embed[:, 1:, :]
    if perm is not None:
        x = torch.stack([x[i, perm[i]] for i in range(len(x))])
    x = torch.cat([(net.cls_token + net.pos_embed[:, :1, :]).expand(len(x), -1, -1), x], dim=1)
    for blk in net.blocks:
        x = blk(x)
    x = net.decoder_embed(net.norm(x)) + net.decoder_pos_embed
    logits = []
    for blk in net.decoder_blocks:
        x = blk(x)
        logits.append(net.unpatchify(net.mask_pred(x)[:, 1:, :], channels=2))
    return net.unpatchify(net.decoder_pred(net.decoder_norm(x))[:, 1:, :]), logits


def test_stage2_keep_and_shuffle_token_orders() -> None:
    torch.manual_seed(0)
    net = IsstadMAE(32, 8, 32, 2, 2, 32, 3, 2, 2).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        keep_rec, keep_logits = net.forward_stage2(x)
        ref_rec, ref_logits = stage2_reference(net, x)
        torch.testing.assert_close(keep_rec, ref_rec)
        for got, ref in zip(keep_logits, ref_logits, strict=True):
            torch.testing.assert_close(got, ref)

        shuffled_rec, shuffled_logits = net.forward_stage2(
            x, shuffle=True, generator=torch.Generator().manual_seed(3)
        )
        perm = torch.argsort(torch.rand(2, 16, generator=torch.Generator().manual_seed(3)), dim=1)
        assert not torch.equal(perm, torch.arange(16).expand(2, -1))
        ref_rec, ref_logits = stage2_reference(net, x, perm)
        torch.testing.assert_close(shuffled_rec, ref_rec)
        for got, ref in zip(shuffled_logits, ref_logits, strict=True):
            torch.testing.assert_close(got, ref)
        assert float((shuffled_rec - keep_rec).abs().max()) > 1e-2  # shuffling changes the output

        again, _ = net.forward_stage2(x, shuffle=True, generator=torch.Generator().manual_seed(3))
        other, _ = net.forward_stage2(x, shuffle=True, generator=torch.Generator().manual_seed(4))
    assert torch.equal(again, shuffled_rec)  # deterministic for a seed
    assert not torch.allclose(other, shuffled_rec)


def test_shuffled_token_order_model_is_deterministic_for_a_seed(tmp_path) -> None:
    def fit(order: str, seed: int) -> ISSTAD:
        torch.manual_seed(seed)
        model = ISSTAD(
            ISSTADConfig.build("fast", **TINY, stage1_epochs=1, stage2_epochs=2, stage2_token_order=order)
        )
        model.fit(loader_of(train_images(4)))
        return model

    images = normalised(train_images(2))
    shuffled = fit("shuffle", 5)
    maps = shuffled.predict(images).anomaly_maps
    np.testing.assert_array_equal(shuffled.predict(images).anomaly_maps, maps)  # every call the same
    np.testing.assert_array_equal(
        fit("shuffle", 5).predict(images).anomaly_maps, maps
    )  # same seed, same model
    assert not np.allclose(fit("shuffle", 6).predict(images).anomaly_maps, maps)
    assert not np.allclose(fit("keep", 5).predict(images).anomaly_maps, maps)
    shuffled.save(tmp_path / "shuffled.pt")
    np.testing.assert_array_equal(
        AnomalyModel.load(tmp_path / "shuffled.pt").predict(images).anomaly_maps, maps
    )


# --- scoring --------------------------------------------------------------------------------------------
def test_scoring_matches_the_definition(fitted: ISSTAD) -> None:
    images = normalised(torch.stack([object_image(32, 20), object_image(32, 21)]))
    images[1, :, 10:18, 10:18] = 2.0  # a bright blob
    prediction = fitted.predict(images)
    assert prediction.image_scores.shape == (2,) and prediction.image_scores.dtype == np.float32
    assert prediction.anomaly_maps.shape == (2, 32, 32) and prediction.anomaly_maps.dtype == np.float32

    # P and R recomputed from the network outputs
    unit = images * torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1) + torch.tensor(
        (0.485, 0.456, 0.406)
    ).view(1, 3, 1, 1)
    x = (unit - 0.5) / 0.5
    with torch.no_grad():
        rec, logits = fitted.net.forward_stage2(x)
    prob = torch.stack([lg.softmax(1)[:, 1] for lg in logits]).mean(0).numpy()
    error = ((rec - x) ** 2).mean(1).numpy()
    p_model, r_model = fitted.pixel_maps(images)
    np.testing.assert_allclose(p_model, prob, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(r_model, error, rtol=1e-5, atol=1e-6)

    for i in range(2):
        r_norm = (error[i] - error[i].min()) / (error[i].max() - error[i].min())
        expected_map = gaussian_filter(prob[i] * r_norm, sigma=4)
        np.testing.assert_allclose(prediction.anomaly_maps[i], expected_map, rtol=1e-4, atol=1e-6)
        smoothed = gaussian_filter(gaussian_filter(prob[i], 4) * gaussian_filter(error[i], 4), 4)
        assert prediction.image_scores[i] == pytest.approx(smoothed.mean(), rel=1e-4)


def test_scores_helper_handles_flat_error_and_sigma_zero() -> None:
    prob = np.random.default_rng(0).random((1, 16, 16)).astype(np.float32)
    scores, maps = isstad_scores(prob, np.ones((1, 16, 16), np.float32), sigma=4.0)
    assert np.all(maps == 0) and scores[0] > 0
    _, raw = isstad_scores(prob, np.arange(256, dtype=np.float32).reshape(1, 16, 16), sigma=0)
    np.testing.assert_allclose(raw[0], prob[0] * np.arange(256).reshape(16, 16) / 255, rtol=1e-6)


def test_maps_come_back_at_the_input_resolution(fitted: ISSTAD) -> None:
    """Other sizes: the image is resized (bilinear) to the model's crop, P and R are resized back to the input
    size, and the scoring runs there."""
    unit = object_image(48)[None]
    unit[:, :, 18:30, 18:30] = 1.0  # a bright square, so that the maps are not flat
    prediction = fitted.predict(normalised(unit))
    assert prediction.anomaly_maps.shape == (1, 48, 48)
    x = (F.interpolate(unit, size=(32, 32), mode="bilinear", align_corners=False) - 0.5) / 0.5
    with torch.no_grad():
        rec, logits = fitted.net.forward_stage2(x)
    prob = torch.stack([lg.softmax(1)[:, 1] for lg in logits]).mean(0)
    error = ((rec - x) ** 2).mean(1)
    back = [
        F.interpolate(m[:, None], size=(48, 48), mode="bilinear", align_corners=False)[:, 0]
        for m in (prob, error)
    ]
    scores, maps = isstad_scores(back[0].numpy(), back[1].numpy(), sigma=4.0)
    np.testing.assert_allclose(prediction.anomaly_maps, maps, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(prediction.image_scores, scores, rtol=1e-4)


# --- persistence and determinism ------------------------------------------------------------------------
def test_save_load_round_trip(fitted: ISSTAD, tmp_path) -> None:
    images = normalised(train_images(3))
    before = fitted.predict(images)
    path = tmp_path / "isstad.pt"
    fitted.save(path)
    loaded = AnomalyModel.load(path)
    assert isinstance(loaded, ISSTAD) and loaded.weights_source == fitted.weights_source
    after = loaded.predict(images)
    np.testing.assert_array_equal(before.image_scores, after.image_scores)
    np.testing.assert_array_equal(before.anomaly_maps, after.anomaly_maps)
    assert loaded.history == fitted.history


def test_same_seed_same_model() -> None:
    config = ISSTADConfig.build("fast", **TINY, stage1_epochs=2, stage2_epochs=2)
    results = []
    for _ in range(2):
        torch.manual_seed(5)
        model = ISSTAD(config)
        model.fit(loader_of(train_images(4)))
        results.append(model.predict(normalised(train_images(2))).anomaly_maps)
    np.testing.assert_array_equal(results[0], results[1])


def test_predict_before_fit_raises() -> None:
    model = ISSTAD(ISSTADConfig.build("fast", **TINY))
    with pytest.raises(RuntimeError):
        model.predict(torch.zeros(1, 3, 32, 32))


@pytest.mark.parametrize(
    "category, per_category, expected",
    [
        ("zipper", True, {"max_shapes": 3, "area_limit": False, "remove_black": True}),
        ("capsule", True, {"max_shapes": 1, "area_limit": False, "remove_black": False}),
        ("bottle", True, {"max_shapes": 3, "area_limit": True, "remove_black": False}),
        ("brick", True, {"max_shapes": 3, "area_limit": True, "remove_black": False}),
        ("zipper", False, {"max_shapes": 3, "area_limit": True, "remove_black": False}),
    ],
)
def test_corruption_settings_follow_the_batches_category(category, per_category, expected) -> None:
    """The official per-category corruption comes from the loader's "category", not from the image paths."""
    torch.manual_seed(0)
    config = ISSTADConfig.build(
        "fast", **TINY, stage1_epochs=0, stage2_epochs=1, corruption_per_category=per_category
    )
    model = ISSTAD(config)
    model.fit(loader_of(train_images(4), category=category))
    recorded = model.corruption_settings
    assert {k: recorded[k] for k in expected} == expected
    assert recorded["category"] == (category if per_category else None)


def test_several_categories_in_one_fit_raise() -> None:
    model = ISSTAD(ISSTADConfig.build("fast", **TINY, stage1_epochs=0, stage2_epochs=1))
    batches = loader_of(train_images(4), category="zipper") + loader_of(train_images(4), category="carpet")
    with pytest.raises(ValueError, match="one model per category"):
        model.fit(batches)


# --- weights ----------------------------------------------------------------------------------------------
def test_encoder_weights_from_a_checkpoint_file(tmp_path) -> None:
    torch.manual_seed(0)
    source = IsstadMAE(32, 8, 32, 2, 2, 32, 2, 2, 1)
    path = tmp_path / "mae.pth"
    torch.save({"model": source.state_dict()}, path)
    torch.manual_seed(1)
    target = IsstadMAE(32, 8, 32, 2, 2, 32, 4, 2, 1)
    label = load_pretrained_encoder(target, "none", str(path))
    assert label.startswith("file:")
    assert torch.equal(target.blocks[1].attn.qkv.weight, source.blocks[1].attn.qkv.weight)
    assert torch.equal(target.decoder_blocks[0].mlp.fc1.weight, source.decoder_blocks[0].mlp.fc1.weight)
    # decoder block 1 is beyond the stage-1 decoder: stays at its own init
    assert not torch.equal(target.decoder_blocks[1].mlp.fc1.weight, source.decoder_blocks[1].mlp.fc1.weight)
    with pytest.raises(EncoderWeightsError):
        load_pretrained_encoder(IsstadMAE(32, 8, 64, 2, 2, 32, 2, 2, 1), "none", str(path))


def test_encoder_weights_errors_are_weights_errors_that_say_the_fix(tmp_path) -> None:
    """Missing file, unreadable file, wrong encoder: a WeightsError (as the backbones raise), one line, with the fix."""
    good = tmp_path / "mae.pth"
    torch.save({"model": IsstadMAE(32, 8, 32, 2, 2, 32, 2, 2, 1).state_dict()}, good)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    for model, weights in (
        (IsstadMAE(32, 8, 32, 2, 2, 32, 2, 2, 1), str(tmp_path / "missing.pth")),
        (IsstadMAE(32, 8, 32, 2, 2, 32, 2, 2, 1), str(junk)),
        (IsstadMAE(32, 8, 64, 2, 2, 32, 2, 2, 1), str(good)),
        (IsstadMAE(32, 8, 32, 3, 2, 32, 2, 2, 1), str(good)),
    ):
        with pytest.raises(WeightsError) as info:
            load_pretrained_encoder(model, "none", weights)
        message = str(info.value)
        assert isinstance(info.value, EncoderWeightsError)
        assert "\n" not in message and "--weights PATH" in message and "--weights random" in message


def test_timm_vit_weights_map_onto_the_encoder(monkeypatch) -> None:
    """weights='imagenet' copies a timm VisionTransformer's encoder (stand-in model: no download in tests)."""
    import timm
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=0)
    monkeypatch.setattr(timm, "create_model", lambda name, pretrained=False, **kw: vit)
    target = IsstadMAE(32, 8, 32, 2, 2, 32, 2, 2, 1)
    label = load_pretrained_encoder(target, "vit_tiny_stand_in", "imagenet")
    assert label == "timm:vit_tiny_stand_in:pretrained"
    assert torch.equal(target.patch_embed.proj.weight, vit.patch_embed.proj.weight)
    assert torch.equal(target.blocks[1].mlp.fc2.weight, vit.blocks[1].mlp.fc2.weight)
    assert torch.equal(target.norm.weight, vit.norm.weight) and torch.equal(target.cls_token, vit.cls_token)


# --- config ---------------------------------------------------------------------------------------------
def test_presets_build_and_register() -> None:
    assert get_method("isstad") is ISSTAD
    paper = ISSTADConfig.build("paper")
    assert (paper.encoder_dim, paper.encoder_depth, paper.patch_size, paper.crop) == (1024, 24, 16, 224)
    assert (paper.stage1_epochs, paper.stage2_epochs, paper.decoder_depth, paper.stage1_decoder_depth) == (
        305,
        200,
        12,
        6,
    )
    assert paper.mask_ratio == 0.75 and paper.sigma == 4.0 and paper.repair_target == "clean"
    assert paper.stage2_token_order == "keep"
    assert (paper.ce_weight_normal, paper.ce_weight_anomalous) == (3.0, 1.0)
    assert ISSTADConfig.build(None) == paper
    fast = ISSTADConfig.build("fast")
    assert fast.weights == "random" and fast.encoder_weights == "random"
    assert ISSTAD(fast).weights_source == "random (NOT pretrained)"
    assert ISSTADConfig.build("fast", stage2_epochs="3", repair_target="corrupted").stage2_epochs == 3


@pytest.mark.parametrize(
    "overrides",
    [
        {"patch_size": 12},  # does not divide 128
        {"mask_ratio": 1.0},
        {"mask_ratio": -0.1},
        {"repair_target": "input"},
        {"stage2_token_order": "random"},
        {"stage1_decoder_depth": 6, "decoder_depth": 4},
        {"encoder_heads": 3},
        {"weights": "bundled"},
        {"weights": "imagenet"},  # fast preset has no timm backbone name
        {"stage2_epochs": 0},
        {"corruption_prob": 1.5},
        {"ssim_window": 10},
        {"stage2_normalization": "none"},
        {"sigma": -1},
        {"stage1_epochs": "many"},
        {"no_such_field": 1},
    ],
)
def test_invalid_values_raise(overrides: dict) -> None:
    with pytest.raises(ConfigError):
        ISSTADConfig.build("fast", **overrides)


def test_unknown_preset_raises() -> None:
    with pytest.raises(ConfigError):
        ISSTADConfig.build("huge")


# --- real data ----------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_isstad_short_fast_on_bottle(mvtec_bottle_root) -> None:
    """ISSTAD `fast` with shortened stages (30 + 40 epochs instead of 50 + 70, about 2 minutes instead of 4) on
    MVTec AD bottle, seed 0, random init (labelled). This run measured image AUROC 0.783, pixel AUROC 0.739 (the
    full fast preset: 0.881 / 0.835, issue 6); the thresholds leave room for thread-count differences and sit
    well above chance (an untrained or broken model scores about 0.5, std about 0.06 on 83 images)."""
    from ad_core.runner import RunSpec, run

    spec = RunSpec(method="isstad", dataset="mvtec", root=str(mvtec_bottle_root), categories=["bottle"],
                   preset="fast", seed=0, overrides={"stage1_epochs": 30, "stage2_epochs": 40,
                                                     "stage2_cosine_period": 40})
    result = run(spec)
    m = result.categories["bottle"].metrics
    assert result.categories["bottle"].counts["test"] == 83
    assert result.provenance["random_weights"]
    assert m["image_auroc"] >= 0.72 and m["pixel_auroc"] >= 0.69, m
