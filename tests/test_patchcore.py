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
    never_pool_up_maps,
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


def _clustered_patches() -> torch.Tensor:
    """1,500 points in 12 clusters of R^64: far clusters keep stale bounds longest in the lazy loop."""
    g = torch.Generator().manual_seed(3)
    centres = torch.randn(12, 64, generator=g) * 4
    return centres[torch.randint(0, 12, (1500,), generator=g)] + torch.randn(1500, 64, generator=g)


@pytest.mark.parametrize("block_size", [1, 7, 64, 5000])
def test_lazy_coreset_matches_reference_on_clustered_features(block_size: int):
    """Deferred per-block updates (blocks of one point, blocks that do not divide N, one block) select
    exactly what the dense float64 loop selects, on clustered data where far blocks stay stale longest."""
    features = _clustered_patches()
    ours = approximate_greedy_coreset(features, 0.15, 32, 10, generator=torch.Generator().manual_seed(5),
                                      block_size=block_size)
    np.testing.assert_array_equal(ours, reference_coreset(features, 0.15, 32, 10, seed=5))


def test_lazy_coreset_breaks_exact_ties_by_lowest_index_like_the_dense_loop():
    """Duplicate patches (flat backgrounds) tie exactly. Small integer coordinates and one start point keep
    every distance the square root of an exact integer, so ties are exact in float32 too; the lazy loop takes
    the lowest index among them, as np.argmax over all points does."""
    g = torch.Generator().manual_seed(4)
    base = torch.randint(-3, 4, (40, 8), generator=g).float()
    features = torch.cat([base, base, base])[torch.randperm(120, generator=g)]  # each point three times
    x = features.double().numpy()
    start = int(torch.randperm(120, generator=torch.Generator().manual_seed(1))[0])  # the function's one draw
    distance = np.sqrt(((x - x[start]) ** 2).sum(1))
    dense = []
    for _ in range(36):
        dense.append(int(np.argmax(distance)))
        distance = np.minimum(distance, np.sqrt(((x - x[dense[-1]]) ** 2).sum(1)))
    for block_size in (1, 5, 16, 200):
        ours = approximate_greedy_coreset(features, 0.3, 8, 1, generator=torch.Generator().manual_seed(1),
                                          block_size=block_size)
        np.testing.assert_array_equal(ours, dense)


def test_device_coreset_loop_matches_reference():
    """The dense torch loop that runs on a GPU (here on CPU tensors) selects what the reference selects."""
    from ad_core.components.coreset import greedy_on_device

    features = _clustered_patches()
    draw = torch.Generator().manual_seed(5)  # the same draws, in the same order, as approximate_greedy_coreset
    reduced = features @ (torch.randn(64, 32, generator=draw) / np.sqrt(32))
    starts = torch.randperm(len(features), generator=draw)[:10]
    ours = greedy_on_device(reduced, starts, int(1500 * 0.15))
    np.testing.assert_array_equal(ours, reference_coreset(features, 0.15, 32, 10, seed=5))


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


def test_torch_exact_search_equals_faiss():
    """The exact search a GPU model runs (torch; here on CPU tensors, in chunks smaller than the query count)
    returns faiss IndexFlatL2's squared distances and neighbours."""
    import faiss

    from ad_core.components.scoring import TorchFlatL2

    rng = np.random.default_rng(2)
    bank, queries = rng.normal(size=(700, 48)).astype(np.float32), rng.normal(size=(130, 48)).astype(np.float32)
    index = faiss.IndexFlatL2(48)
    index.add(bank)
    for k in (1, 3):
        want_d, want_i = index.search(queries, k)
        got_d, got_i = TorchFlatL2(torch.from_numpy(bank), chunk=50).search(torch.from_numpy(queries), k)
        np.testing.assert_allclose(got_d.numpy(), want_d, rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(got_i.numpy(), want_i)


def _clustered(n: int, rng: np.random.Generator, dim: int = 96, rank: int = 12) -> np.ndarray:
    """Points near a 12-dimensional subspace of R^96, as patch embeddings are (a few dominant directions)."""
    basis = rng.normal(size=(rank, dim))
    return (rng.normal(size=(n, rank)) @ basis * 3 + rng.normal(size=(n, dim)) * 0.3).astype(np.float32)


@pytest.mark.parametrize("index", ["pca_refine", "ivf"])
def test_approximate_search_returns_true_distances_never_below_exact(index: str) -> None:
    rng = np.random.default_rng(0)
    data = _clustered(6000, rng)
    bank, queries = data[:5000], data[5000:]
    brute = ((queries.astype(np.float64)[:, None] - bank[None]) ** 2).sum(-1)
    scorer = NearestNeighbourScorer(bank, 1, index, nprobe=8, pca_dim=16, refine_factor=16)
    assert "approximate" in scorer.description
    approx = scorer(queries)
    exact = brute.min(1)
    # Each returned value is the distance to some bank vector, so it can only be too high.
    assert (approx >= exact * (1 - 1e-4) - 1e-3).all()
    assert np.abs(brute - approx[:, None]).min(1).max() < 1e-3 * exact.max()
    assert np.mean(np.isclose(approx, exact, rtol=1e-4)) > 0.9


def test_approximate_search_falls_back_to_exact_on_small_banks_and_says_so() -> None:
    rng = np.random.default_rng(1)
    bank, queries = _clustered(500, rng), _clustered(40, rng)
    scorer = NearestNeighbourScorer(bank, 1, "pca_refine", pca_dim=16)
    assert scorer.description == "exact (faiss IndexFlatL2) (pca_refine requested; bank of 500 is searched exactly)"
    brute = ((queries[:, None] - bank[None]) ** 2).sum(-1)
    np.testing.assert_allclose(scorer(queries), brute.min(1), rtol=1e-4)


def test_scorer_labels_and_config_checks() -> None:
    from ad_core.components.scoring import scorer_label

    assert scorer_label({"coreset_ratio": 0.1}) == "exact"  # stored before nn_index existed
    assert scorer_label({"coreset_ratio": 0.1, "nn_index": "ivf", "ivf_nprobe": 4, "num_neighbors": 3}) == "IVF nprobe 4, k=3"
    assert scorer_label(PatchCoreConfig(nn_index="pca_refine").to_dict()) == "PCA-128 + re-rank x8"
    assert scorer_label({"epochs": 3}) is None and scorer_label(None) is None
    with pytest.raises(ConfigError, match="nn_index must be one of flat, pca_refine, ivf"):
        PatchCoreConfig(nn_index="hnsw").validate()
    with pytest.raises(ConfigError, match="nn_refine_factor"):
        PatchCoreConfig(nn_index="pca_refine", nn_refine_factor=0).validate()


def test_scores_to_prediction_definition():
    patch = torch.rand(2, 7, 7, generator=torch.Generator().manual_seed(0))
    pred = scores_to_prediction(patch, (56, 56), sigma=4)
    assert pred.anomaly_maps.shape == (2, 56, 56) and pred.image_scores.shape == (2,)
    np.testing.assert_allclose(pred.image_scores, patch.reshape(2, -1).max(1).values.numpy())
    up = F.interpolate(patch[:, None], size=(56, 56), mode="bilinear", align_corners=False)[:, 0].numpy()
    np.testing.assert_allclose(pred.anomaly_maps[1], gaussian_filter(up[1], sigma=4), rtol=1e-5, atol=1e-6)


def _adaptive_average(vector: np.ndarray, size: int) -> np.ndarray:
    """Adaptive 1-D average pooling by hand: output k averages inputs floor(k n / size) .. ceil((k+1) n / size)."""
    n = len(vector)
    return np.array([vector[(k * n) // size : -((-(k + 1) * n) // size)].mean() for k in range(size)])


def _neighbourhood(feature: np.ndarray, i: int, j: int) -> np.ndarray:
    """The 3x3 neighbourhood of position (i, j) of [C, h, w], zero outside, channel-major (c, di, dj)."""
    c, h, w = feature.shape
    out = np.zeros((c, 3, 3))
    for di in range(3):
        for dj in range(3):
            y, x = i + di - 1, j + dj - 1
            if 0 <= y < h and 0 <= x < w:
                out[:, di, dj] = feature[:, y, x]
    return out.reshape(-1)


def _bilinear_weights(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] bilinear interpolation matrix, half-pixel centres (align_corners=False), edges clamped."""
    weights = np.zeros((n_out, n_in))
    for o in range(n_out):
        src = max(0.0, (o + 0.5) * n_in / n_out - 0.5)
        i0 = min(int(np.floor(src)), n_in - 1)
        i1, frac = min(i0 + 1, n_in - 1), src - i0
        weights[o, i0] += 1 - frac
        weights[o, i1] += frac
    return weights


def test_patch_features_follow_the_official_aggregation_by_hand():
    """PatchCore's locally aware features, computed by hand as the official code does (PatchMaker + Preprocessing
    (MeanMapper) + Aggregator + the bilinear upsampling of `_embed`): per stage the 3x3 zero-padded
    neighbourhood of every position flattened channel-major, the coarser stage's neighbourhoods upsampled to
    the finest grid, each stage's vector adaptive-average-pooled to pretrain_embed_dim, the stages
    concatenated and pooled to target_embed_dim. Dimensions are chosen so that every pooling bin is uneven
    (overlapping bins), which a different flattening order or pooling would not reproduce."""
    pf = PatchFeatures("resnet18", "random", pretrain_embed_dim=4, target_embed_dim=3, device="cpu")
    g = torch.Generator().manual_seed(0)
    fine = torch.randn(2, 2, 4, 4, generator=g)  # stage 1: 2 channels x 9 = 18 values -> 4
    coarse = torch.randn(2, 3, 2, 2, generator=g)  # stage 2: 27 values -> 4, grid 2x2 -> 4x4
    pf.backbone = lambda images: [fine, coarse]
    out = pf(torch.zeros(2, 3, 16, 16))
    assert out.shape == (2, 4, 4, 3)

    up = _bilinear_weights(2, 4)
    for b in range(2):
        grid = range(2)
        hoods_coarse = np.array([[_neighbourhood(coarse[b].numpy(), i, j) for j in grid] for i in grid])
        hoods_up = np.einsum("yi,xj,ijd->yxd", up, up, hoods_coarse)  # each component bilinearly upsampled
        for i in range(4):
            for j in range(4):
                stage1 = _adaptive_average(_neighbourhood(fine[b].numpy(), i, j), 4)
                stage2 = _adaptive_average(hoods_up[i, j], 4)
                expected = _adaptive_average(np.concatenate([stage1, stage2]), 3)
                np.testing.assert_allclose(out[b, i, j].numpy(), expected, rtol=1e-5, atol=1e-6)


def _pairwise(features: torch.Tensor) -> torch.Tensor:
    flat = features.reshape(-1, features.shape[-1]).double()
    return torch.cdist(flat, flat, compute_mode="donot_use_mm_for_euclid_dist")


def test_embedding_never_exceeds_efficientnet_lite0_patches():
    """EfficientNet-Lite0's stages 2 and 3 have 40 and 112 channels: 360 and 1008 values per 3x3 patch. The
    official pooling gives each stage 512 of 1024 values, so stage 2 is pooled up; never pooling up stores
    it in its 360 values (872 in all) with the official pairwise distances."""
    ours = PatchFeatures("tf_efficientnet_lite0", "random", embed_dim_policy="never_pool_up")
    official = PatchFeatures("tf_efficientnet_lite0", "random", embed_dim_policy="official")
    stage_values = [c * 9 for c in ours.backbone.channels]
    assert stage_values == [360, 1008]
    assert (ours.dim, official.dim) == (872, 1024)
    assert ours.stage_maps[0].shape == (360, 360) and ours.stage_maps[1] is None
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    ours_out, official_out = ours(images), official(images)
    assert ours_out.shape == (2, 8, 8, 872)
    expected = _pairwise(official_out)
    torch.testing.assert_close(_pairwise(ours_out), expected, rtol=1e-5, atol=1e-5 * float(expected.max()))
    # Stage 3 (1008 values, pooled down) is the official pooling itself.
    torch.testing.assert_close(ours_out[..., 360:], official_out[..., 512:], rtol=0, atol=0)


def test_embedding_is_official_where_the_official_code_pools_down():
    """WideResNet-50's layer2 + layer3 (512 and 1024 channels: 4608 and 9216 values per patch) pool down: the
    official 1024 values, bit-identical to the official policy's features on such channel counts."""
    assert never_pool_up_maps([512 * 9, 1024 * 9], 1024, 1024) is None
    assert never_pool_up_maps([128 * 9, 256 * 9], 1024, 1024) is None  # resnet18: 1152 and 2304 values
    reduce = never_pool_up_maps([360, 1008], 1024, 1024)
    assert reduce[0].shape == (360, 360) and reduce[1] is None
    g = torch.Generator().manual_seed(0)
    fine, coarse = torch.randn(1, 512, 6, 6, generator=g), torch.randn(1, 1024, 3, 3, generator=g)
    outputs = []
    for policy in ("never_pool_up", "official"):
        pf = PatchFeatures("resnet18", "random", embed_dim_policy=policy)
        pf.backbone = lambda images: [fine, coarse]
        outputs.append(pf(torch.zeros(1, 3, 48, 48)))
    assert outputs[0].shape == (1, 6, 6, 1024)
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=0)
    with pytest.raises(ValueError, match="embed_dim_policy"):
        PatchFeatures("resnet18", "random", embed_dim_policy="up")


def test_embed_dim_policy_config():
    assert PatchCoreConfig.build().embed_dim_policy == "never_pool_up"
    assert get_method("patchcore")(PatchCoreConfig.build("fast", weights="random")).describe()["embedding_dim"] == 872
    # A config stored before the field existed was computed with the official sizes, and loads with them.
    stored = PatchCoreConfig.build("fast").to_dict()
    del stored["embed_dim_policy"]
    assert PatchCoreConfig.from_dict(stored).embed_dim_policy == "official"
    with pytest.raises(ConfigError, match="embed_dim_policy"):
        PatchCoreConfig.build(embed_dim_policy="up")


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
