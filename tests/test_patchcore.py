"""PatchCore building blocks against direct re-computations, and the method end to end on tiny data."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from ad_core.components import (
    NearestNeighbourScorer,
    PatchFeatures,
    approximate_greedy_coreset,
    scores_to_prediction,
)
from ad_core.methods import ConfigError, get_method
from ad_core.methods.patchcore import PatchCoreConfig


def reference_coreset(features, ratio, projection_dim, start_points, seed):
    """Straight transcription of the approximate greedy k-center algorithm with an explicit distance matrix."""
    g = torch.Generator().manual_seed(seed)
    projection = torch.randn(features.shape[1], projection_dim, generator=g) / np.sqrt(projection_dim)
    x = (features @ projection).double()
    starts = torch.randperm(len(x), generator=g)[:start_points]
    full = torch.cdist(x, x)
    dist = full[:, starts].mean(1)
    chosen = []
    for _ in range(int(len(x) * ratio)):
        idx = int(torch.argmax(dist))
        chosen.append(idx)
        dist = torch.minimum(dist, full[:, idx])
    return np.array(chosen)


def test_coreset_matches_reference():
    features = torch.randn(300, 64, generator=torch.Generator().manual_seed(1))
    ours = approximate_greedy_coreset(features, 0.1, 16, 5, generator=torch.Generator().manual_seed(7))
    ref = reference_coreset(features, 0.1, 16, 5, seed=7)
    assert len(ours) == 30
    np.testing.assert_array_equal(ours, ref)
    assert len(set(ours.tolist())) == 30  # greedy k-center never picks a point twice


def test_coreset_covers_outliers():
    """k-center keeps far-away points: a cluster of 200 plus 3 outliers -> the outliers are in a 2% coreset."""
    g = torch.Generator().manual_seed(0)
    features = torch.cat([torch.randn(200, 8, generator=g) * 0.01, torch.eye(8)[:3] * 100])
    keep = approximate_greedy_coreset(features, 0.02, 128, 10, generator=g)
    assert {200, 201, 202} <= set(keep.tolist())


def test_nearest_neighbour_scores_are_squared_l2():
    rng = np.random.default_rng(0)
    bank, queries = rng.normal(size=(50, 16)).astype(np.float32), rng.normal(size=(20, 16)).astype(np.float32)
    brute = ((queries[:, None] - bank[None]) ** 2).sum(-1)
    np.testing.assert_allclose(NearestNeighbourScorer(bank, 1)(queries), brute.min(1), rtol=1e-4)
    np.testing.assert_allclose(NearestNeighbourScorer(bank, 3)(queries), np.sort(brute, 1)[:, :3].mean(1), rtol=1e-4)


def test_scores_to_prediction_definition():
    patch = torch.rand(2, 7, 7, generator=torch.Generator().manual_seed(0))
    pred = scores_to_prediction(patch, (56, 56), sigma=4)
    assert pred.anomaly_maps.shape == (2, 56, 56) and pred.image_scores.shape == (2,)
    np.testing.assert_allclose(pred.image_scores, patch.reshape(2, -1).max(1).values.numpy())
    up = F.interpolate(patch[:, None], size=(56, 56), mode="bilinear", align_corners=False)[:, 0].numpy()
    np.testing.assert_allclose(pred.anomaly_maps[1], gaussian_filter(up[1], sigma=4), rtol=1e-5, atol=1e-6)


def test_patch_features_aggregate_local_neighbourhoods():
    """The 3x3 aggregation equals a direct neighbourhood gather, and pooling follows the official layout."""
    pf = PatchFeatures("resnet18", "random", pretrain_embed_dim=64, target_embed_dim=32, device="cpu")
    feature = torch.randn(1, 4, 5, 5)
    patches = pf._patchify(feature)  # [1,5,5,36]
    padded = F.pad(feature, (1, 1, 1, 1))
    direct = padded[0, :, 1:4, 2:5].reshape(-1)  # neighbourhood of position (1, 2), channel-major
    torch.testing.assert_close(patches[0, 1, 2], direct)
    out = pf(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 8, 8, 32)


def test_config_presets_and_validation():
    fast = PatchCoreConfig.build("fast")
    assert fast.backbone == "tf_efficientnet_lite0" and fast.weights == "bundled"
    assert PatchCoreConfig.build("paper").coreset_ratio == 0.1
    assert PatchCoreConfig.build("fast", coreset_ratio="0.2").coreset_ratio == 0.2
    with pytest.raises(ConfigError, match="coreset_ratio"):
        PatchCoreConfig.build(coreset_ratio=0)
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        PatchCoreConfig.build("huge")
    with pytest.raises(ConfigError, match="unknown config field"):
        PatchCoreConfig.build(not_a_field=1)
    with pytest.raises(ConfigError, match="expects float"):
        PatchCoreConfig.build(coreset_ratio="lots")
    with pytest.raises(ConfigError, match="unknown method 'nope'"):
        get_method("nope")


def _tiny_model(**overrides):
    cls = get_method("patchcore")
    cfg = cls.Config.build("fast", resize=64, crop=64, coreset_ratio=0.25, **overrides)
    return cls(cfg)


def test_patchcore_detects_a_bright_square_and_roundtrips(tmp_path):
    torch.manual_seed(0)
    model = _tiny_model()
    normal = torch.randn(6, 3, 64, 64) * 0.1
    loader = [{"image": normal[:3]}, {"image": normal[3:]}]
    model.fit(loader)
    test = torch.randn(2, 3, 64, 64) * 0.1
    test[1, :, 24:40, 24:40] += 3.0
    pred = model.predict(test)
    assert pred.image_scores[1] > pred.image_scores[0]
    inside, outside = pred.anomaly_maps[1, 28:36, 28:36].mean(), pred.anomaly_maps[1, :8, :8].mean()
    assert inside > outside
    path = tmp_path / "model.pt"
    model.save(path)
    again = type(model).load(path)
    np.testing.assert_array_equal(again.predict(test).anomaly_maps, pred.anomaly_maps)
