"""ReConPatch: pseudo-labels and loss on hand-computed examples, EMA target, ensemble normalisation,
end-to-end fit/predict with a save/load round trip, and config validation. Tiny inputs; a few seconds on a CPU.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import ad_core.methods.reconpatch  # noqa: F401  (registers "reconpatch")
from ad_core.components import MAD_BETA, modified_z_score, robust_stats, scores_to_prediction
from ad_core.methods.base import AnomalyModel, ConfigError, get_method
from ad_core.methods.reconpatch import (
    ReConPatch,
    ReConPatchConfig,
    contextual_similarity,
    ema_update,
    knn_indices,
    pairwise_similarity,
    pseudo_labels,
    reciprocal_half,
    relaxed_contrastive_loss,
)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one thread is many times faster than several on a busy machine (no OpenMP spinning)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# Five points on a line in 2-D: A=0, B=1, C=3.5, D=5, E=8.5 (no distance ties for k = 3).
LINE = torch.tensor([[0.0, 0.0], [1.0, 0.0], [3.5, 0.0], [5.0, 0.0], [8.5, 0.0]], dtype=torch.float64)


def reference_contextual(z: torch.Tensor, k: int) -> np.ndarray:
    """Set-based transcription of w^C (methods.md §2.2), self included in N_k, h = round(k/2)."""
    n = len(z)
    d = torch.cdist(z, z).numpy()
    order = [sorted(range(n), key=lambda j, i=i: (j != i, d[i, j])) for i in range(n)]
    nk = [set(order[i][:k]) for i in range(n)]
    h = max(1, round(k / 2))
    nh = [set(order[i][:h]) for i in range(n)]
    w_tilde = np.zeros((n, n))
    for i in range(n):
        for j in nk[i]:
            w_tilde[i, j] = len(nk[i] & nk[j]) / len(nk[i])
    w_hat = np.zeros((n, n))
    for i in range(n):
        r = [j for j in nh[i] if i in nh[j]]
        w_hat[i] = w_tilde[r].mean(0)
    return 0.5 * (w_hat + w_hat.T)


# --- pseudo-labels ---------------------------------------------------------------------------------


def test_pairwise_similarity_is_a_gaussian_kernel():
    z = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    expected = torch.exp(-torch.tensor([[0.0, 1.0, 4.0], [1.0, 0.0, 5.0], [4.0, 5.0, 0.0]]) / 2.0)
    torch.testing.assert_close(pairwise_similarity(z, sigma=2.0), expected)


def test_knn_sets_include_self_first():
    nbr = knn_indices(LINE, 3)
    # N_3: A{A,B,C} B{B,A,C} C{C,D,B} D{D,C,E} E{E,D,C}
    assert nbr.tolist() == [[0, 1, 2], [1, 0, 2], [2, 3, 1], [3, 2, 4], [4, 3, 2]]
    duplicates = torch.zeros(4, 2)  # all distances 0: every point must still be first in its own set
    assert knn_indices(duplicates, 2)[:, 0].tolist() == [0, 1, 2, 3]
    assert (
        reciprocal_half(5) == 2
        and reciprocal_half(3) == 2
        and reciprocal_half(4) == 2
        and reciprocal_half(1) == 1
    )


def test_contextual_similarity_by_hand():
    """k = 3, h = 2 on A=0, B=1, C=3.5, D=5, E=8.5.

    w̃ rows (|N(i) ∩ N(j)| / 3 for j in N_3(i)):
      A: [1, 1, 2/3, 0, 0]   B: [1, 1, 2/3, 0, 0]   C: [0, 2/3, 1, 2/3, 0]
      D: [0, 0, 2/3, 1, 1]   E: [0, 0, 2/3, 1, 1]
    N_2: A{A,B} B{B,A} C{C,D} D{D,C} E{E,D}; reciprocal sets R: A{A,B} B{A,B} C{C,D} D{C,D} E{E}
    (E is in nobody's N_2 but its own). ŵ = mean of w̃ rows over R(i):
      A,B: [1, 1, 2/3, 0, 0]   C,D: [0, 1/3, 5/6, 5/6, 1/2]   E: [0, 0, 2/3, 1, 1]
    w^C = (ŵ + ŵᵀ) / 2.
    """
    expected = np.array(
        [
            [1, 1, 1 / 3, 0, 0],
            [1, 1, 1 / 2, 1 / 6, 0],
            [1 / 3, 1 / 2, 5 / 6, 5 / 6, 7 / 12],
            [0, 1 / 6, 5 / 6, 5 / 6, 3 / 4],
            [0, 0, 7 / 12, 3 / 4, 1],
        ]
    )
    w_c = contextual_similarity(LINE, 3).numpy()
    np.testing.assert_allclose(w_c, expected, atol=1e-12)
    np.testing.assert_allclose(w_c, w_c.T)  # symmetrised
    np.testing.assert_allclose(reference_contextual(LINE, 3), expected, atol=1e-12)
    # The reciprocal expansion matters: C's row averages C's and D's overlaps (without it, w^C_CE = 1/3).
    assert w_c[2, 4] == pytest.approx(7 / 12)


def test_contextual_similarity_matches_set_reference_on_random_points():
    z = torch.randn(40, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    for k in (1, 2, 5, 8):
        got = contextual_similarity(z, k).numpy()
        np.testing.assert_allclose(got, reference_contextual(z, k), atol=1e-12)
        np.testing.assert_allclose(got, got.T)
        assert got.min() >= 0 and got.max() <= 1


def test_pseudo_labels_mix_both_similarities():
    z = torch.nn.functional.normalize(torch.randn(12, 4, generator=torch.Generator().manual_seed(0)), dim=1)
    w = pseudo_labels(z, sigma=1.0, k=5, alpha=0.5)
    torch.testing.assert_close(w, 0.5 * pairwise_similarity(z, 1.0) + 0.5 * contextual_similarity(z, 5))
    torch.testing.assert_close(pseudo_labels(z, 1.0, 5, alpha=1.0), pairwise_similarity(z, 1.0))
    torch.testing.assert_close(w, w.T)


# --- loss ----------------------------------------------------------------------------------------------


def test_relaxed_contrastive_loss_by_hand():
    """z = (0,0), (3,0), (0,4): distances AB=3, AC=4, BC=5; anchor means μ = 7/3, 8/3, 3 (self included).

    δ: AB 9/7, AC 12/7, BA 9/8, BC 15/8, CA 4/3, CB 5/3. With w below and margin 2:
    row A = .5(9/7)² + .5(5/7)² + (2/7)² = 57/49; row B = .5[(9/8)² + (7/8)²] + .25(15/8)² + .75(1/8)² = 61/32;
    row C = (2/3)² + .25(5/3)² + .75(1/3)² = 11/9; loss = mean of the rows.
    """
    z = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]], dtype=torch.float64)
    w = torch.tensor([[1.0, 0.5, 0.0], [0.5, 1.0, 0.25], [0.0, 0.25, 1.0]], dtype=torch.float64)
    expected = (57 / 49 + 61 / 32 + 11 / 9) / 3
    assert float(relaxed_contrastive_loss(z, w, margin=2.0)) == pytest.approx(expected, rel=1e-12)
    # margin 1: every δ > 1 here, so only the attracting terms remain
    attract = (0.5 * (9 / 7) ** 2 + 0.5 * (9 / 8) ** 2 + 0.25 * (15 / 8) ** 2 + 0.25 * (5 / 3) ** 2) / 3
    assert float(relaxed_contrastive_loss(z, w, margin=1.0)) == pytest.approx(attract, rel=1e-12)


def test_loss_is_scale_invariant_and_has_finite_gradients_for_duplicates():
    z = torch.randn(16, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    z[3] = z[2]  # a duplicate pair: zero distance off the diagonal
    w = pseudo_labels(torch.nn.functional.normalize(z, dim=1), 1.0, 5, 0.5)
    a = relaxed_contrastive_loss(z, w)
    assert float(a) == pytest.approx(float(relaxed_contrastive_loss(7.5 * z, w)), rel=1e-6)
    zz = z.clone().requires_grad_(True)
    relaxed_contrastive_loss(zz, w).backward()
    assert torch.isfinite(zz.grad).all()


# --- EMA target --------------------------------------------------------------------------------------


def test_ema_update_rule():
    target, online = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    with torch.no_grad():
        target.weight.copy_(torch.tensor([[1.0, 2.0]]))
        online.weight.copy_(torch.tensor([[3.0, -2.0]]))
        target.bias.fill_(0.0)
        online.bias.fill_(1.0)
    ema_update(target, online, 0.75)
    torch.testing.assert_close(target.weight, torch.tensor([[1.5, 1.0]]))
    torch.testing.assert_close(target.bias, torch.tensor([0.25]))


def test_target_network_gets_no_gradient_and_follows_ema():
    cfg = ReConPatchConfig.build(
        backbone="resnet18",
        weights="random",
        resize=32,
        crop=32,
        epochs=1,
        batch_patches=64,
        patches_per_epoch=64,
        ema_momentum=0.8,
        lr=1e-2,
    )
    torch.manual_seed(0)
    model = ReConPatch(cfg)
    member = model.members[0]
    before_target = {k: v.clone() for k, v in member.f_target.state_dict().items()}
    before_online = {k: v.clone() for k, v in member.f.state_dict().items()}
    model._train(
        0,
        member,
        torch.randn(200, cfg.target_embed_dim),
        torch.Generator().manual_seed(0),
        lambda f, m: None,
        "",
    )
    targets = [*member.f_target.parameters(), *member.g_target.parameters()]
    assert all(not p.requires_grad and p.grad is None for p in targets)
    assert all(p.grad is not None for p in member.f.parameters())  # the online network did train
    for key, value in member.f.state_dict().items():
        assert not torch.equal(value, before_online[key])
        # one step: θ̄ = γ θ̄_0 + (1 - γ) θ_1
        torch.testing.assert_close(member.f_target.state_dict()[key], 0.8 * before_target[key] + 0.2 * value)
    assert [h["epoch"] for h in model.history] == [0, 1] and math.isfinite(model.history[1]["loss"])
    assert all(math.isfinite(h["probe_loss"]) for h in model.history)


# --- ensemble normalisation ------------------------------------------------------------------------------


def test_median_mad_normalisation_tiny_example():
    median, mad = robust_stats(np.array([1.0, 2.0, 3.0, 4.0, 100.0]))
    assert (median, mad) == (3.0, 1.0)  # |x - 3| = 2, 1, 0, 1, 97 -> median 1 (robust to the outlier)
    np.testing.assert_allclose(
        modified_z_score(np.array([3.0, 5.0, 1.0]), median, mad),
        [0.0, 2 / MAD_BETA, -2 / MAD_BETA],
        rtol=1e-6,
    )
    assert np.isfinite(
        modified_z_score(np.array([1.0, 2.0]), 1.0, 0.0)
    ).all()  # zero MAD does not divide by 0


# --- end to end -------------------------------------------------------------------------------------------


def _images(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 64, 64, generator=g) * 0.1


def _with_square(images: torch.Tensor) -> torch.Tensor:
    out = images.clone()
    out[1, :, 24:40, 24:40] += 3.0
    return out


TINY = dict(resize=64, crop=64, epochs=2, batch_patches=128, coreset_ratio=0.25)


def test_fit_predict_roundtrip(tmp_path):
    torch.manual_seed(0)
    cls = get_method("reconpatch")
    assert cls is ReConPatch
    model = cls(cls.Config.build("fast", **TINY))
    train = _images(6, 0)
    model.fit([{"image": train[:3]}, {"image": train[3:]}])
    assert model.members[0].memory_bank.shape == (96, 512)  # 25% of 6 x 8 x 8 patches, 512-d f-space
    assert [h["epoch"] for h in model.history] == [0, 1, 2]  # epoch 0: the probe before training
    test = _with_square(_images(2, 1))
    pred = model.predict(test)
    assert pred.image_scores.shape == (2,) and pred.anomaly_maps.shape == (2, 64, 64)
    assert pred.anomaly_maps.dtype == np.float32
    assert pred.image_scores[1] > pred.image_scores[0]
    assert pred.anomaly_maps[1, 28:36, 28:36].mean() > pred.anomaly_maps[1, :8, :8].mean()
    path = tmp_path / "reconpatch.pt"
    model.save(path)
    again = AnomalyModel.load(path)
    assert isinstance(again, ReConPatch) and again.config == model.config
    again_pred = again.predict(test)
    np.testing.assert_array_equal(again_pred.image_scores, pred.image_scores)
    np.testing.assert_array_equal(again_pred.anomaly_maps, pred.anomaly_maps)


def test_zero_epochs_keeps_f_at_its_orthogonal_initialisation():
    """The untrained-f ablation (`epochs=0`): no training step, f is the orthogonal random projection it
    started as, and the memory bank holds f(p) of PatchCore's patch features; training changes f."""
    torch.manual_seed(0)
    untrained = ReConPatch(ReConPatchConfig.build("fast", **{**TINY, "epochs": 0}))
    start = untrained.members[0].f.weight.detach().clone()
    train = _images(6, 0)
    untrained.fit([{"image": train[:3]}, {"image": train[3:]}])
    f = untrained.members[0].f.weight.detach()
    torch.testing.assert_close(f, start, rtol=0, atol=0)
    torch.testing.assert_close(f @ f.T, torch.eye(f.shape[0]), rtol=0, atol=1e-5)  # orthonormal rows
    assert untrained.history == [] and untrained.describe()["history"] == []
    torch.manual_seed(0)
    trained = ReConPatch(ReConPatchConfig.build("fast", **TINY))
    torch.testing.assert_close(trained.members[0].f.weight.detach(), start, rtol=0, atol=0)  # same init
    trained.fit([{"image": train[:3]}, {"image": train[3:]}])
    assert (trained.members[0].f.weight.detach() - start).abs().max() > 1e-4
    assert [h["epoch"] for h in trained.describe()["history"]] == [0, 1, 2]


def test_ensemble_averages_mad_normalised_members():
    torch.manual_seed(0)
    cfg = ReConPatchConfig.build(
        weights="random",
        ensemble_backbones="resnet18,tf_efficientnet_lite0",
        ensemble_repr_dim=32,
        holdout_fraction=0.25,
        **TINY,
    )
    model = ReConPatch(cfg)
    assert [m.config.backbone for m in model.members] == ["resnet18", "tf_efficientnet_lite0"]
    assert model.members[0].preprocess.mean != model.members[1].preprocess.mean
    train = _images(8, 2)
    model.fit([{"image": train[:4]}, {"image": train[4:]}])
    for member in model.members:
        assert member.norm["held_out_images"] == 2
        assert member.memory_bank.shape == (96, 32)  # 25% of the 6 remaining images' 384 patches
    test = _with_square(_images(2, 3))
    pred = model.predict(test)
    # by hand: every member's own PatchCore-style output, median/MAD-normalised, then averaged
    scores, maps = [], []
    for member in model.members:
        mean = torch.tensor(member.preprocess.mean).view(1, 3, 1, 1)
        std = torch.tensor(member.preprocess.std).view(1, 3, 1, 1)
        own = (
            test * torch.tensor(model.preprocess().std).view(1, 3, 1, 1)
            + torch.tensor(model.preprocess().mean).view(1, 3, 1, 1)
            - mean
        ) / std
        raw = scores_to_prediction(member.patch_scores(member.features(own)), (64, 64), cfg.sigma)
        n = member.norm
        scores.append((raw.image_scores - n["image_median"]) / (MAD_BETA * n["image_mad"]))
        maps.append((raw.anomaly_maps - n["map_median"]) / (MAD_BETA * n["map_mad"]))
    np.testing.assert_allclose(pred.image_scores, np.mean(scores, 0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(pred.anomaly_maps, np.mean(maps, 0), rtol=1e-4, atol=1e-4)
    state = model.state_dict()  # (random backbones are not saved, so no file round trip here)
    assert [m["norm"] for m in state["members"]] == [m.norm for m in model.members]


# --- config ------------------------------------------------------------------------------------------------


def test_config_presets_and_validation():
    paper = ReConPatchConfig.build("paper")
    assert (paper.epochs, paper.lr, paper.weight_decay, paper.coreset_ratio) == (120, 1e-5, 1e-2, 0.01)
    assert (paper.repr_dim, paper.knn_k, paper.alpha, paper.margin) == (512, 5, 0.5, 1.0)
    fast = ReConPatchConfig.build("fast")
    assert fast.backbone == "tf_efficientnet_lite0" and fast.weights == "bundled"
    ens = ReConPatchConfig.build("ensemble")
    assert len(ens.ensemble_backbones) == 3 and ens.ensemble_repr_dim == 384
    assert ReConPatchConfig.build(ensemble_backbones="a b").ensemble_backbones == ("a", "b")
    assert ReConPatchConfig.build(normalize_target="false").normalize_target is False
    bad = [
        ({"batch_patches": 5}, "batch_patches"),
        ({"ema_momentum": 1.0}, "ema_momentum"),
        ({"similarity_sigma": 0}, "similarity_sigma"),
        ({"alpha": 1.5}, "alpha"),
        ({"margin": 0}, "margin"),
        ({"knn_k": 0}, "knn_k"),
        ({"epochs": -1}, "epochs"),
        ({"proj_dim": 0}, "proj_dim"),
        ({"lr": 0}, "lr"),
        ({"patches_per_epoch": -1}, "patches_per_epoch"),
        ({"cache_dtype": "int8"}, "cache_dtype"),
        ({"holdout_fraction": 1.0}, "holdout_fraction"),
        ({"ensemble_backbones": ("resnet18",)}, "at least 2"),
        ({"ensemble_backbones": ("resnet18", "resnet18")}, "duplicates"),
        ({"coreset_ratio": 0}, "coreset_ratio"),
        ({"epochs": "many"}, "expects int"),
        ({"not_a_field": 1}, "unknown config field"),
    ]
    for overrides, message in bad:
        with pytest.raises(ConfigError, match=message):
            ReConPatchConfig.build(**overrides)
    with pytest.raises(ConfigError, match="unknown preset"):
        ReConPatchConfig.build("huge")


# --- real data ----------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_reconpatch_fast_on_bottle(mvtec_bottle_root) -> None:
    """ReConPatch `fast` (as users run it) on MVTec AD bottle, seed 0, native frame (issue 5's protocol) and
    PatchCore's acceptance band: image AUROC 1.0 as PatchCore, pixel AUROC and AUPRO near issue 5's measured
    0.977 / 0.935. The training history has the probe loss before and after every epoch."""
    from ad_core.runner import RunSpec, run

    spec = RunSpec(method="reconpatch", dataset="mvtec", root=str(mvtec_bottle_root), categories=["bottle"],
                   preset="fast", seed=0, frame="native")
    result = run(spec)
    m = result.categories["bottle"].metrics
    assert result.categories["bottle"].counts["test"] == 83
    assert m["image_auroc"] >= 0.99 and m["pixel_auroc"] >= 0.97 and m["aupro"] >= 0.92, m
    history = result.units[0].details["history"]
    assert [h["epoch"] for h in history] == list(range(17)) and all(math.isfinite(h["probe_loss"]) for h in history)
