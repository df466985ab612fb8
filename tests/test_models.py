"""Tests for sycam.models: the offline registry, weights files, layer discovery and the layers table."""
from __future__ import annotations

import csv
import sys
import textwrap
import types
from pathlib import Path

import pytest
import torch
from torch import nn

from sycam.models import (
    ModelBundle,
    Normalize,
    bundle_from_module,
    conv_layers,
    default_layer,
    layers_table,
    load_model,
    resolve_layer,
    stage_layers,
)

tv = pytest.importorskip("torchvision")


class SmallNet(nn.Module):
    """Two convs at 8x8, a pool, one conv at 4x4, global mean, linear head (5 classes)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(4, 4, 3, padding=1),
            nn.MaxPool2d(2),
            nn.Conv2d(4, 6, 3, padding=1),
            nn.ReLU(),
        )
        self.head = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).mean(dim=(2, 3)))


def meta_model(name: str) -> nn.Module:
    """A torchvision model built on the meta device: shapes without the cost of initialising weights."""
    with torch.device("meta"):
        return tv.models.get_model(name)


class NoConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(2, 3)))


# ----------------------------------------------------------------------------- normalisation


def test_normalize_exact_and_validated() -> None:
    n = Normalize()
    x = torch.zeros(2, 3, 1, 1)
    x[:, :, 0, 0] = torch.tensor([0.485, 1.0, 0.0])
    out = n(x)
    assert torch.allclose(out[0, :, 0, 0], torch.tensor([0.0, (1 - 0.456) / 0.224, -0.406 / 0.225]))
    assert n(torch.zeros(3, 2, 2)).shape == (3, 2, 2)
    with pytest.raises(ValueError, match=r"expected images \(\.\.\., 3, H, W\), got \(2, 1, 4, 4\)"):
        n(torch.zeros(2, 1, 4, 4))
    with pytest.raises(TypeError, match="float images"):
        n(torch.zeros(1, 3, 2, 2, dtype=torch.uint8))
    with pytest.raises(ValueError, match="std must be positive"):
        Normalize((0.5,), (0.0,))


# ----------------------------------------------------------------------------- torchvision names


def test_load_torchvision_name_random_weights() -> None:
    b = load_model("resnet18", device="cpu")
    assert isinstance(b, ModelBundle)
    assert b.name == "resnet18" and b.num_classes == 1000 and b.input_size == (224, 224)
    assert b.default_layer == "layer4"
    assert b.stage_layers == ["conv1", "layer1.1.conv2", "layer2.1.conv2", "layer3.1.conv2", "layer4.1.conv2"]
    assert b.class_names is not None and len(b.class_names) == 1000 and b.class_names[0] == "tench"
    assert not any(m.training for m in b.module.modules())
    assert all(p.device.type == "cpu" for p in b.module.parameters())
    assert b.normalize == Normalize()
    default = load_model("resnet18")  # default device: CUDA when available, else CPU
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert next(default.module.parameters()).device.type == expected


def test_unknown_name_lists_forms_and_close_matches() -> None:
    with pytest.raises(ValueError) as e:
        load_model("resnet5O")
    msg = str(e.value)
    assert "unknown model 'resnet5O'" in msg and "resnet50" in msg
    assert "package.module:factory" in msg and "'builtin'" in msg
    with pytest.raises(ValueError, match="non-empty string"):
        load_model("  ")


def test_local_weights_file_roundtrip_and_wrappers(tmp_path: Path) -> None:
    torch.manual_seed(1)
    src = tv.models.get_model("squeezenet1_1")
    with torch.no_grad():
        src.classifier[1].bias.copy_(torch.arange(1000.0))
    sd = src.state_dict()
    plain = tmp_path / "sq.pth"
    torch.save(sd, plain)
    wrapped = tmp_path / "sq_wrapped.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}, wrapped)
    for path in (plain, wrapped):
        b = load_model("squeezenet1_1", weights=str(path), device="cpu")
        for k, v in b.module.state_dict().items():
            assert torch.equal(v, sd[k]), k
        assert torch.equal(b.module.classifier[1].bias, torch.arange(1000.0))


def test_wrong_architecture_weights_error_names_file_and_keys(tmp_path: Path) -> None:
    path = tmp_path / "sq10.pth"
    torch.save(tv.models.get_model("squeezenet1_0").state_dict(), path)
    with pytest.raises(ValueError) as e:
        load_model("squeezenet1_1", weights=str(path), device="cpu")
    msg = str(e.value)
    assert str(path) in msg and "'squeezenet1_1'" in msg
    # squeezenet1_0's first conv is 7x7 with 96 filters, 1_1's is 3x3 with 64
    assert "features.0.weight: file (96, 3, 7, 7) vs model (64, 3, 3, 3)" in msg
    path2 = tmp_path / "small.pth"
    torch.save(SmallNet().state_dict(), path2)
    with pytest.raises(ValueError, match=r"missing keys: features\.0\.weight.*unexpected keys: body\.0\.weight"):
        load_model("squeezenet1_1", weights=str(path2), device="cpu")


def test_bad_weights_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="weights file not found: .*nope.pth"):
        load_model("squeezenet1_1", weights=str(tmp_path / "nope.pth"), device="cpu")
    pickled = tmp_path / "whole_model.pth"
    torch.save(SmallNet(), pickled)  # a whole pickled module, not a state dict
    with pytest.raises(ValueError, match=r"whole_model.pth: cannot be read as a tensor state dict"):
        load_model("squeezenet1_1", weights=str(pickled), device="cpu")
    listed = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], listed)
    with pytest.raises(ValueError, match=r"list.pth: expected a state dict"):
        load_model("squeezenet1_1", weights=str(listed), device="cpu")


def test_weights_enum_resolves_only_from_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mobilenet_weights: Path) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"not in torch hub's cache .*sycam is offline"):
        load_model("mobilenet_v2", weights="IMAGENET1K_V1", device="cpu")
    with pytest.raises(ValueError, match=r"unknown weights 'IMAGENET1K_V9'.*MobileNet_V2_Weights.IMAGENET1K_V1"):
        load_model("mobilenet_v2", weights="IMAGENET1K_V9", device="cpu")
    with pytest.raises(ValueError, match="its weights enum is MobileNet_V2_Weights"):
        load_model("mobilenet_v2", weights="ResNet18_Weights.IMAGENET1K_V1", device="cpu")
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / "mobilenet_v2-b0353104.pth").symlink_to(mobilenet_weights)  # a link, not a copy
    b = load_model("mobilenet_v2", weights="MobileNet_V2_Weights.IMAGENET1K_V1", device="cpu")
    ref = torch.load(mobilenet_weights, map_location="cpu", weights_only=True)
    assert torch.equal(b.module.classifier[1].weight, ref["classifier.1.weight"])
    assert b.default_layer == "features.18"


def _load_images(root: Path, n: int) -> tuple[torch.Tensor, list[int]]:
    from PIL import Image

    with open(root / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))[:n]
    imgs = []
    for r in rows:
        with Image.open(root / r["image"]) as im:
            im = im.convert("RGB").resize((224, 224), Image.BILINEAR)
            imgs.append(torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(224, 224, 3).permute(2, 0, 1))
    return torch.stack(imgs).float() / 255.0, [int(r["label"]) for r in rows]


@pytest.mark.shared
def test_real_mobilenet_v2_predicts_imagenet_labels(mobilenet_weights: Path, imagenet_dev: Path) -> None:
    b = load_model("mobilenet_v2", weights=str(mobilenet_weights), device="cpu")
    images, labels = _load_images(imagenet_dev, 8)
    with torch.no_grad():
        logits = b.module(b.normalize(images))
    top5 = logits.topk(5, dim=1).indices.tolist()
    hits = sum(label in t for label, t in zip(labels, top5))
    assert hits >= 6, f"top-5 hits {hits}/8"
    assert b.class_names is not None and b.class_names[labels[0]] == "tiger beetle"


# ----------------------------------------------------------------------------- import paths, builtin


def test_import_path_factories(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "user_models_sycam_test.py"
    pkg.write_text(
        textwrap.dedent(
            """
            import torch
            from torch import nn
            from sycam.models import ModelBundle, Normalize

            class Net(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.conv = nn.Conv2d(3, 4, 3, padding=1)
                    self.fc = nn.Linear(4, 7)
                def forward(self, x):
                    return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))

            def make():
                return Net()

            def make_bundle():
                net = Net()
                return ModelBundle(module=net.train(), normalize=Normalize((0.5,) * 3, (0.5,) * 3), input_size=(32, 32),
                                   num_classes=7, default_layer="conv", name="mine")

            def not_a_model():
                return 42
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.warns(UserWarning, match="assuming ImageNet normalisation"):
        b = load_model("user_models_sycam_test:make", device="cpu")
    assert b.num_classes == 7 and b.default_layer == "conv" and b.stage_layers == ["conv"]
    assert b.class_names is None and b.input_size == (224, 224)
    b2 = load_model("user_models_sycam_test:make_bundle", device="cpu")
    assert b2.name == "mine" and b2.input_size == (32, 32) and not b2.module.training
    # a weights file for an import path
    sd = b.module.state_dict()
    sd["fc.bias"] = torch.arange(7.0)
    torch.save(sd, tmp_path / "w.pth")
    with pytest.warns(UserWarning):
        b3 = load_model("user_models_sycam_test:make", weights=str(tmp_path / "w.pth"), device="cpu")
    assert torch.equal(b3.module.fc.bias, torch.arange(7.0))
    with pytest.raises(TypeError, match="returned int, expected an nn.Module or a ModelBundle"):
        load_model("user_models_sycam_test:not_a_model")
    with pytest.raises(ValueError, match="has no attribute 'missing'"):
        load_model("user_models_sycam_test:missing")
    with pytest.raises(ValueError, match="cannot import module 'no_such_module_xyz'"):
        load_model("no_such_module_xyz:make")
    with pytest.raises(ValueError, match="expected 'package.module:factory'"):
        load_model("user_models_sycam_test:")


def test_builtin_delegates_lazily(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[object] = []
    fake = types.ModuleType("sycam.models.builtin")

    def load_builtin_model(device: object = None, progress: bool = True) -> str:
        calls.append(device)
        return "bundle"

    fake.load_builtin_model = load_builtin_model  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "sycam.models.builtin", fake)
    import sycam.models

    monkeypatch.setattr(sycam.models, "builtin", fake, raising=False)
    assert load_model("builtin", device="cpu") == "bundle"
    assert calls == [torch.device("cpu")]
    with pytest.raises(ValueError, match="brings its own weights"):
        load_model("builtin", weights="x.pth")


def test_bundle_from_module_rejects_non_logit_models() -> None:
    class MapOut(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x)

    with pytest.raises(ValueError, match=r"must return logits of shape \(B, K\).*\(1, 2, 8, 8\)"):
        bundle_from_module(MapOut(), name="maps", input_size=(8, 8), device="cpu")


# ----------------------------------------------------------------------------- layers


def test_conv_layers_and_resolve_layer() -> None:
    m = tv.models.resnet18()
    convs = conv_layers(m)
    assert len(convs) == 20 and convs[0] == "conv1" and convs[-1] == "layer4.1.conv2"
    assert convs[7] == "layer2.0.downsample.0"  # named_modules order
    assert resolve_layer(m, -1) == "layer4.1.conv2" and resolve_layer(m, 0) == "conv1" and resolve_layer(m, -20) == "conv1"
    assert resolve_layer(m, "layer3.1") == "layer3.1"
    assert resolve_layer(m, None, default="layer4") == "layer4"
    with pytest.raises(IndexError, match=r"index 20 out of range: ResNet has 20 Conv2d layers \(valid indices -20\.\.19\)"):
        resolve_layer(m, 20)
    with pytest.raises(IndexError, match="has 20 Conv2d layers"):
        resolve_layer(m, -21)
    with pytest.raises(KeyError, match=r"no module named 'layer5'.*'layer4'"):
        resolve_layer(m, "layer5")
    with pytest.raises(KeyError, match=r"'layer4\.1\.conv2'"):
        resolve_layer(m, "layer4.1.cnv2")
    with pytest.raises(ValueError, match="NoConv has none"):
        resolve_layer(NoConv(), 0)
    with pytest.raises(TypeError, match="bool"):
        resolve_layer(m, True)
    with pytest.raises(ValueError, match="no default layer"):
        resolve_layer(m, None)
    assert conv_layers(NoConv()) == []


def test_default_layers_of_known_families() -> None:
    size = (64, 64)  # small probes; the choice does not depend on the size
    expected = {
        "mobilenet_v2": "features.18",
        "vgg11": "features.20",  # features[-1], as pytorch-grad-cam recommends
        "densenet121": "features",
        "efficientnet_b0": "features",
        "convnext_tiny": "features",
        "shufflenet_v2_x0_5": "conv5",
    }
    for name, layer in expected.items():
        assert default_layer(meta_model(name), size) == layer, name
    # regnet's builder computes widths with tensors, which the meta device cannot
    assert default_layer(tv.models.get_model("regnet_y_400mf"), size) == "trunk_output"


def test_default_layer_fallback_and_errors() -> None:
    m = SmallNet()
    assert default_layer(m, (8, 8)) == "body"  # last module with a 4-D output of spatial size > 1
    assert default_layer(m, (2, 2)) == "body.2"  # at 2x2 the pooled maps are 1x1
    with pytest.raises(ValueError, match="no module with a 4-D"):
        default_layer(NoConv(), (8, 8))


def test_stage_layers() -> None:
    assert stage_layers(SmallNet(), (8, 8)) == ["body.2", "body.4"]
    flat = nn.Sequential(
        nn.Conv2d(3, 3, 3, padding=1), nn.Conv2d(3, 3, 3, stride=2, padding=1), nn.Conv2d(3, 3, 3, padding=1),
        nn.Flatten(), nn.Linear(48, 2),
    )
    assert stage_layers(flat, (8, 8)) == ["0", "2"]
    # ResNet-50 v1.5 strides in conv2: layer2.0.conv1 (still 16x16 at 64 px) belongs to the next stage
    assert stage_layers(meta_model("resnet50"), (64, 64)) == [
        "conv1", "layer1.2.conv3", "layer2.3.conv3", "layer3.5.conv3", "layer4.2.conv3",
    ]
    # MobileNetV2: the expansion conv before a strided depthwise conv belongs to the next block
    assert stage_layers(meta_model("mobilenet_v2"), (64, 64)) == [
        "features.1.conv.1", "features.3.conv.2", "features.6.conv.2", "features.13.conv.2", "features.18.0",
    ]
    # squeeze-and-excitation convs on 1x1 vectors are not stages
    eff = stage_layers(meta_model("efficientnet_b0"), (64, 64))
    assert eff[-1] == "features.8.0" and not any(n.endswith(("fc1", "fc2")) for n in eff)
    assert stage_layers(NoConv(), (8, 8)) == []


def test_layers_table_exact() -> None:
    torch.manual_seed(0)
    b = bundle_from_module(SmallNet(), name="small", input_size=(8, 8), device="cpu")
    assert b.default_layer == "body" and b.stage_layers == ["body.2", "body.4"]
    expected = textwrap.dedent(
        """\
        model small: SmallNet, input 8x8, 5 classes, 3 Conv2d layers (conv index i / negative index)
        default layer: body
        stage layers: body.2, body.4

        conv  name    type        output (C, h, w)
              body    Sequential  (6, 4, 4)         default
        0/-3  body.0  Conv2d      (4, 8, 8)
        1/-2  body.2  Conv2d      (4, 8, 8)         stage
        2/-1  body.4  Conv2d      (6, 4, 4)         stage
              head    Linear      (5)
        """
    )
    assert layers_table(b) == expected


def test_layers_table_resnet_marks_default_and_stages() -> None:
    b = bundle_from_module(tv.models.resnet18(), name="resnet18", input_size=(64, 64), device="cpu")
    table = layers_table(b)
    rows = {line.split()[1] if line[:6].strip() else line.split()[0]: line for line in table.splitlines()[5:]}
    assert rows["layer4"].rstrip().endswith("default")
    assert "(512, 2, 2)" in rows["layer4"]
    assert rows["layer2.1.conv2"].split()[0] == "9/-11" and rows["layer2.1.conv2"].rstrip().endswith("stage")
    assert "layer1.0" in rows and "fc" in rows and "relu" in rows
    assert sum(1 for line in table.splitlines()[5:] if "Conv2d" in line) == 20
