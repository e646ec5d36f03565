"""LTAD: frozen foundation model with learned class-name tokens, the feature VAE, tail augmentation, the score
S = S_rec + λ·S_sem, persistence, determinism, class-aware errors and the weights labels.

Everything runs on a tiny open_clip architecture registered here (2-layer 32-wide towers, 32 px images), a
few seconds on a CPU; the runner test on the 10-class long-tailed demo is marked slow.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ad_core.errors import ConfigError, WeightsError
from ad_core.methods.base import AnomalyModel, get_method
from ad_core.methods.ltad import (
    FOUNDATION_RANDOM_LABEL,
    LTAD,
    SEMANTIC_OFF_LABEL,
    FeatureVAE,
    FoundationSpec,
    LTADConfig,
    neighbour_mask,
)

TINY_ARCH = "LTAD-tiny-test"
TINY_FOUNDATION = f"open_clip:{TINY_ARCH}:random"
TINY = dict(
    resize=32, crop=32, batch_size=4, foundation=TINY_FOUNDATION, patch_source="foundation",
    foundation_blocks=(1, 2), feature_dim=16, token_grid=4, rm_neighbour=1, n_name_tokens=2, name_steps=5,
    vae_steps=5, vae_hidden=8, vae_latent=4, vae_batch=4, rm_dim=16, rm_enc_layers=1, rm_dec_layers=1,
    rm_heads=2, rm_ff=32, rm_dropout=0.0, sem_hidden=16, train_steps=6, train_batch=4, augment_below=3,
    augment_to=4, sigma=0.0,
)
COUNTS = {"gears": 6, "nuts": 3, "screws": 1}  # a long tail: screws is the tail class


@pytest.fixture(scope="module", autouse=True)
def tiny_architecture(tmp_path_factory):
    """Register a tiny CLIP architecture with open_clip (its public `add_model_config`)."""
    import open_clip

    folder = tmp_path_factory.mktemp("open_clip_cfg")
    (folder / f"{TINY_ARCH}.json").write_text(json.dumps({
        "embed_dim": 24,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    }))
    open_clip.add_model_config(folder)
    yield


def texture(category: str, index: int, size: int = 32) -> torch.Tensor:
    """A class-specific stripe pattern plus noise, normalised with CLIP's mean/std like the loader would."""
    g = torch.Generator().manual_seed(1000 * sorted(COUNTS).index(category) + index)
    freq = 1 + sorted(COUNTS).index(category)
    x = torch.arange(size).float()
    stripes = 0.5 + 0.4 * torch.sin(x * freq * 0.7)[None, :].expand(size, size)
    img = (stripes[None].expand(3, size, size) + 0.05 * torch.randn(3, size, size, generator=g)).clamp(0, 1)
    mean = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(3, 1, 1)
    std = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(3, 1, 1)
    return (img - mean) / std


def toy_loader(counts: dict[str, int] = COUNTS, batch: int = 4) -> list[dict]:
    samples = [(c, i) for c, n in counts.items() for i in range(n)]
    batches = []
    for k in range(0, len(samples), batch):
        part = samples[k:k + batch]
        batches.append({"image": torch.stack([texture(c, i) for c, i in part]), "category": [c for c, _ in part],
                        "label": torch.zeros(len(part), dtype=torch.long)})
    return batches


def build(seed: int = 0, **overrides) -> LTAD:
    torch.manual_seed(seed)
    return LTAD(LTADConfig.build(**{**TINY, **overrides}))


def fitted(seed: int = 0, counts: dict[str, int] = COUNTS, **overrides) -> LTAD:
    model = build(seed, **overrides)
    model.fit(toy_loader(counts))
    return model


def test_registered_as_multi_class_with_presets():
    cls = get_method("ltad")
    assert cls is LTAD and cls.learning_type == "multi_class"
    fast = LTADConfig.build("fast")
    paper = LTADConfig.build("paper")
    assert fast.foundation.endswith(":random") and fast.patch_source == "backbone" and fast.weights == "bundled"
    assert paper.patch_source == "foundation" and not paper.foundation.endswith(":random")
    assert fast.backbone_names() == ("tf_efficientnet_lite0",) and paper.backbone_names() == ()


def test_name_tokens_get_gradients_and_the_foundation_is_frozen():
    model = fitted()
    foundation = model.foundation
    before = foundation.state_fingerprint()
    assert all(not p.requires_grad for p in foundation.parameters())
    glob = F.normalize(torch.randn(6, foundation.embed_dim), dim=-1)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    model.names.grad = None
    model.name_loss(glob, labels).backward()
    assert model.names.grad is not None and model.names.grad.abs().sum() > 0
    assert all(p.grad is None for p in foundation.parameters())
    # fitting (phase 1 and 2) did not change the foundation model either
    fresh = build().foundation
    assert foundation.state_fingerprint() == pytest.approx(fresh.state_fingerprint(), rel=0, abs=0)
    assert before == foundation.state_fingerprint()
    assert model.log["names"]["loss_last"] < model.log["names"]["loss_first"]


def test_vae_reconstruction_and_kl_decrease_on_an_overfit_toy():
    """Four maps of two classes. The encoder starts with its posterior away from the prior (mu = 2, log var =
    -4, so KL is large) and the likelihood is tight (sigma^2 = 0.1 x data variance), so training must both
    memorise the maps (reconstruction falls) and pull the posterior towards the prior (KL falls)."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = 3 * torch.randn(4, 8, 4, 4, generator=g)
    cond = torch.randn(2, 6, generator=g)[torch.tensor([0, 0, 1, 1])]
    vae = FeatureVAE(8, 6, hidden=32, latent=4)
    vae.noise_var.fill_(0.1 * float(x.var()))
    with torch.no_grad():
        vae.enc[-1].bias[:4] = 2.0  # mu
        vae.enc[-1].bias[4:] = -4.0  # log var

    def terms() -> tuple[float, float]:
        ev = torch.Generator().manual_seed(1)
        with torch.no_grad():
            pairs = [vae.losses(x, cond, ev) for _ in range(8)]
        return float(np.mean([r for r, _ in pairs])), float(np.mean([k for _, k in pairs]))

    rec0, kl0 = terms()
    optimiser = torch.optim.Adam(vae.parameters(), lr=3e-3)
    for _ in range(200):
        rec, kl = vae.losses(x, cond, g)
        optimiser.zero_grad()
        (rec + kl).backward()
        optimiser.step()
    rec1, kl1 = terms()
    assert rec1 < 0.3 * rec0 and kl1 < 0.6 * kl0


def test_synthetic_features_only_for_the_classes_the_config_names():
    named = fitted(augment_classes=("nuts",), augment_to=5)
    assert named.synthetic == {"nuts": 2}
    assert named.describe()["tail_augmentation"]["synthetic_maps"] == {"nuts": 2}
    by_rule = fitted()  # augment_below=3: only screws (1 image) is a tail class; topped up to 4
    assert by_rule.synthetic == {"screws": 3} and by_rule.describe()["tail_augmentation"]["ran"]
    off = fitted(tail_augmentation=False)
    assert off.synthetic == {} and off.vae is None and not off.describe()["tail_augmentation"]["ran"]
    # synthesise produces maps labelled with the planned classes only, normalised like real features
    maps = torch.cat([by_rule.extract(b["image"])[0] for b in toy_loader()])
    labels = torch.tensor([by_rule.classes.index(c) for b in toy_loader() for c in b["category"]])
    synth, synth_labels = by_rule.synthesise({"gears": 2}, maps, labels, torch.Generator().manual_seed(0))
    assert synth.shape == (2, *maps.shape[1:]) and set(synth_labels.tolist()) == {by_rule.classes.index("gears")}
    assert torch.allclose(synth.norm(dim=1), torch.ones(2, 4, 4), atol=1e-5)
    with pytest.raises(ConfigError, match="bolts"):
        fitted(augment_classes=("bolts",))


def test_score_is_rec_plus_lambda_sem_recomputed_by_hand():
    lam = 0.7
    model = fitted(lambda_sem=lam)
    images = torch.stack([texture("gears", 10), texture("screws", 11)])
    categories = ["gears", "screws"]
    scores = model.patch_scores(images, categories)
    with torch.no_grad():
        maps, _ = model.extract(images)
        tokens = maps.flatten(2).transpose(1, 2)  # [B, L, D]
        rec = ((model.rm(tokens) - tokens) ** 2).sum(-1)
        proj = F.normalize(model.projection.net(tokens), dim=-1)
        idx = torch.tensor([model.classes.index(c) for c in categories])
        cos_n = (proj * model.t_normal[idx][:, None]).sum(-1) / model.config.sem_temperature
        cos_a = (proj * model.t_abnormal[idx][:, None]).sum(-1) / model.config.sem_temperature
        sem = torch.exp(cos_a) / (torch.exp(cos_n) + torch.exp(cos_a))
        total = rec + lam * sem
    assert torch.allclose(scores["rec"].reshape(2, -1), rec, atol=1e-5)
    assert torch.allclose(scores["sem"].reshape(2, -1), sem, atol=1e-5)
    assert torch.allclose(scores["total"].reshape(2, -1), total, atol=1e-5)
    prediction = model.predict(images, categories)  # sigma = 0: image score = max patch score
    assert np.allclose(prediction.image_scores, total.max(dim=1).values.numpy(), atol=1e-5)
    assert prediction.anomaly_maps.shape == (2, 32, 32) and prediction.anomaly_maps.dtype == np.float32
    # the class matters for S_sem only: the same image scored as another class changes sem, not rec
    other = model.patch_scores(images, ["nuts", "nuts"])
    assert torch.allclose(other["rec"], scores["rec"]) and not torch.allclose(other["sem"], scores["sem"])


def test_lambda_zero_is_reconstruction_only_and_labelled():
    model = fitted(lambda_sem=0.0)
    images = torch.stack([texture("nuts", 10)])
    scores = model.patch_scores(images, ["nuts"])
    assert model.projection is None and torch.equal(scores["total"], scores["rec"])
    assert SEMANTIC_OFF_LABEL in model.weights_source and SEMANTIC_OFF_LABEL in model.describe()["variant"]
    bare = build(lambda_sem=0.0, tail_augmentation=False, patch_source="backbone", backbone="tf_efficientnet_lite0",
                 weights="bundled", token_grid=0, rm_neighbour=0)
    assert bare.foundation_spec is None and "no foundation model" in bare.weights_source


def test_random_foundation_is_labelled_everywhere():
    model = fitted()
    assert FOUNDATION_RANDOM_LABEL == "random foundation model (NOT pretrained)"
    assert FOUNDATION_RANDOM_LABEL in model.weights_source and "NOT pretrained" in model.weights_source
    details = model.describe()
    assert details["foundation_random"] and FOUNDATION_RANDOM_LABEL in details["variant"]
    assert FOUNDATION_RANDOM_LABEL in details["weights_source"]


def test_save_load_round_trip(tmp_path):
    model = fitted()
    images = torch.stack([texture("gears", 20), texture("screws", 21), texture("nuts", 22)])
    categories = ["gears", "screws", "nuts"]
    before = model.predict(images, categories)
    model.save(tmp_path / "ltad.pt")
    loaded = AnomalyModel.load(tmp_path / "ltad.pt")
    after = loaded.predict(images, categories)
    assert isinstance(loaded, LTAD) and loaded.classes == model.classes and loaded.synthetic == model.synthetic
    assert loaded.weights_source == model.weights_source
    np.testing.assert_allclose(after.image_scores, before.image_scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(after.anomaly_maps, before.anomaly_maps, rtol=1e-5, atol=1e-6)


def test_deterministic_for_a_seed_on_cpu():
    images = torch.stack([texture("gears", 30), texture("screws", 31)])
    a = fitted(seed=5).predict(images, ["gears", "screws"])
    b = fitted(seed=5).predict(images, ["gears", "screws"])
    c = fitted(seed=6).predict(images, ["gears", "screws"])
    np.testing.assert_array_equal(a.image_scores, b.image_scores)
    np.testing.assert_array_equal(a.anomaly_maps, b.anomaly_maps)
    assert not np.array_equal(a.image_scores, c.image_scores)


def test_class_never_seen_in_training_is_a_clear_error():
    model = fitted()
    images = torch.stack([texture("gears", 40)])
    with pytest.raises(ConfigError, match="never seen in training.*bolts|bolts.*never seen in training"):
        model.predict(images, ["bolts"])
    with pytest.raises(ConfigError, match="class-aware"):
        model.predict(images)
    with pytest.raises(ConfigError, match="no normal training image"):
        LTAD.check_data(LTADConfig.build(**TINY), {"a": {"train": 3, "train_anomalous": 0}, "b": {"train": 0}})
    with pytest.raises(ConfigError, match="not in this run"):
        LTAD.check_data(LTADConfig.build(**TINY, augment_classes=("c",)), {"a": {"train": 3}, "b": {"train": 2}})


@pytest.mark.parametrize(
    "foundation, message",
    [
        ("clip-b32", "open_clip:<architecture>"),
        ("transformers:kakaobrain/align-base:hub", "not supported yet"),
        ("open_clip:ViT-Q-99:random", "unknown open_clip architecture"),
        ("open_clip:ViT-B-32:no_such_tag", "no pretrained tag"),
        ("open_clip:ViT-B-32:/nowhere/clip.pt", "does not exist"),
    ],
)
def test_bad_foundation_selection_is_one_clear_config_error(foundation, message):
    with pytest.raises(ConfigError, match=message):
        LTADConfig.build(**{**TINY, "foundation": foundation})


def test_config_validation():
    with pytest.raises(ConfigError, match="rm_neighbour"):
        LTADConfig.build(**{**TINY, "rm_neighbour": 5})
    with pytest.raises(ConfigError, match="exactly one"):
        LTADConfig.build(**{**TINY, "normal_prompt": "a flawless object"})
    with pytest.raises(ConfigError, match="lambda_sem"):
        LTADConfig.build(**{**TINY, "lambda_sem": -1})
    spec = FoundationSpec.parse("open_clip:ViT-B-32:openai")
    assert spec.source_label() == "open_clip:ViT-B-32:openai" and not spec.is_random
    mask = neighbour_mask((4, 4), 3)
    assert mask.shape == (16, 16) and mask[0, 0] and mask[0, 5] and not mask[0, 2]


def test_unreachable_pretrained_foundation_fails_with_instructions(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from ad_core.methods.ltad.foundation import Foundation

    with pytest.raises(WeightsError, match="random"):
        Foundation(FoundationSpec.parse("open_clip:RN50:openai"))


@pytest.mark.slow
def test_runner_on_the_long_tailed_multiclass_demo(tmp_path):
    """The fast preset (shortened) through the runner on long_tail:exp100 of the 10-class demo."""
    from ad_core.data import MULTICLASS_DEMO_CATEGORIES, make_demo_dataset
    from ad_core.runner import RunSpec, run
    from ad_core.splits import SplitSpec

    root = make_demo_dataset(tmp_path / "demo", categories=MULTICLASS_DEMO_CATEGORIES, n_train=20,
                             n_test_good=3, n_test_defect=5, image_size=96)
    spec = RunSpec(method="ltad", dataset="demo", root=str(root), categories=list(MULTICLASS_DEMO_CATEGORIES),
                   preset="fast", split=SplitSpec.parse("long_tail:exp100").to_dict(), seed=0,
                   overrides={"resize": 64, "crop": 64, "token_grid": 8, "rm_neighbour": 3, "name_steps": 3, "vae_steps": 3, "train_steps": 3,
                              "name_images_per_class": 2})
    result = run(spec)
    assert set(result.categories) == set(MULTICLASS_DEMO_CATEGORIES) and len(result.units) == 1
    details = result.units[0].details
    assert details["tail_augmentation"]["ran"] and FOUNDATION_RANDOM_LABEL in result.provenance["weights_source"]
    counts = details["train_counts"]
    assert set(details["tail_augmentation"]["synthetic_maps"]) == {c for c, n in counts.items() if n < 20}
    for r in result.categories.values():
        assert r.anomaly_maps.shape[1:] == (256, 256) and np.isfinite(r.anomaly_maps).all()  # the evaluation frame
