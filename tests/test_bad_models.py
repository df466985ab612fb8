"""Bad models, bad weights, bad targets: every mistake gets a message that says what and where,
as sycam's own error (:class:`~sycam.errors.SycamError`), and the user's model is left as found.

Each scenario below is run once (memoised); two tests read its outcome:

- ``test_message_says_what_and_where``: the message names the culprit (the file, the layer, the
  import path, the shape, the class count) and, for layers, close candidates;
- ``test_error_is_sycams_own``: the exception is a ``SycamError`` (what the CLI turns into a one-line
  message and exit status 2 instead of a traceback).

Scenarios marked ``xfail(strict=True, reason="BUG: ...")`` are known defects; the reason names
what happens today. The last section checks that an error inside capture leaves the model as it
was: training flags, hooks, ``.grad``, ``requires_grad``, parameters and the grad mode.
"""
from __future__ import annotations

import io
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
import torchvision as tv
from torch import nn

from sycam.capture import CaptureRequest, capture
from sycam.errors import LayerError, SycamError
from sycam.explainer import Explainer
from sycam.models import bundle_from_module, load_model


# ---------------------------------------------------------------------------- small models


class TinyNet(nn.Module):
    """conv1 (4 ch, 8x8) -> conv2 (4 ch, 8x8) -> global mean -> fc (3 classes).

    ``kind`` makes the output wrong on purpose: a tuple, a dict, the 4-D feature map, a 1-D vector,
    a tensor cut off from the graph.
    """

    def __init__(self, kind: str = "logits") -> None:
        super().__init__()
        self.kind = kind
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> Any:
        a = self.conv2(torch.relu(self.conv1(x)))
        y = self.fc(a.mean((2, 3)))
        return {
            "logits": y,
            "tuple": (y, a),
            "dict": {"logits": y},
            "4d": a,
            "1d": y[:, 0],
            "detached": y.detach(),
        }[self.kind]


class MLP(nn.Module):
    """No convolution at all: CAM methods have nothing to explain."""

    def __init__(self) -> None:
        super().__init__()
        self.flat = nn.Flatten()
        self.fc = nn.Linear(3 * 8 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flat(x))


class FunctionalConv(nn.Module):
    """A 4-D feature layer without nn.Conv2d (a functional convolution): explainable when named."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 3, 3, 3) * 0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.conv2d(x, self.weight, padding=1)


class NoConv2dNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = FunctionalConv()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.features(x)).mean((2, 3)))


class OneChannelNet(nn.Module):
    """Expects grey images: a forward pass on RGB fails inside torch."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean((2, 3)))


X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))

USER_MODULE = "sycam_test_user_models"
USER_MODULE_TEXT = textwrap.dedent('''
    from torch import nn

    def raises():
        raise RuntimeError("the user's factory failed")

    def needs_arguments(width):
        return nn.Conv2d(3, width, 3)

    def returns_text():
        return "not a model"

    NOT_CALLABLE = 5

    class _Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return self.conv(x).mean((2, 3)), 0

    def tuple_model():
        return _Pair()
''')
BROKEN_MODULE = "sycam_test_broken_module"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Weights files and user modules, written once for the whole module."""
    root = tmp_path_factory.mktemp("bad_models")
    paths: dict[str, Path] = {}

    def save(name: str, obj: Any) -> None:
        paths[name] = root / f"{name}.pth"
        torch.save(obj, paths[name])

    save("resnet18", tv.models.resnet18().state_dict())
    save("mobilenet_v2_10_classes", tv.models.mobilenet_v2(num_classes=10).state_dict())
    save("whole_model", TinyNet())
    save("a_list", [torch.zeros(2)])
    save("empty_dict", {})
    buf = io.BytesIO()
    torch.save(tv.models.mobilenet_v2().state_dict(), buf)
    paths["truncated"] = root / "truncated.pth"
    paths["truncated"].write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    paths["empty_file"] = root / "empty_file.pth"
    paths["empty_file"].write_bytes(b"")
    paths["text_file"] = root / "text_file.pth"
    paths["text_file"].write_text("these are not weights\n")
    paths["missing"] = root / "missing.pth"
    paths["directory"] = root / "folder.pth"
    paths["directory"].mkdir()
    (root / f"{USER_MODULE}.py").write_text(USER_MODULE_TEXT)
    (root / f"{BROKEN_MODULE}.py").write_text("def factory(:\n    pass\n")
    sys.path.insert(0, str(root))
    yield paths
    sys.path.remove(str(root))
    for name in (USER_MODULE, BROKEN_MODULE):
        sys.modules.pop(name, None)


# ---------------------------------------------------------------------------- scenarios


def _explain(model: nn.Module, program: str = "gradcam", targets: Any = 1, images: torch.Tensor = X, **kw: Any) -> Any:
    return Explainer(model, program, **kw)(images, targets)


def _mobilenet(files: dict[str, Path], name: str) -> Any:
    return load_model("mobilenet_v2", weights=str(files[name]), device="cpu")


def _import(spec: str) -> Any:
    return load_model(spec, device="cpu")


class Case:
    """One bad input: how to trigger it, what its message must contain, and known defects."""

    def __init__(self, trigger: Callable[[dict[str, Path]], Any], parts: Callable[[dict[str, Path]], list[str]] | list[str],
                 not_sycam: str = "", unclear: str = "") -> None:
        self.trigger = trigger
        self.parts = parts
        self.not_sycam = not_sycam  # BUG text when the exception is not a SycamError today
        self.unclear = unclear  # BUG text when the message misses what/where today


NOT_SYCAM_CAPTURE = "BUG: capture raises a plain {} (not a SycamError): the CLI shows a traceback"
NOT_SYCAM_LOAD = "BUG: load_model raises a plain {} (not a SycamError): `sycam explain --model/--weights` shows a traceback"

CASES: dict[str, Case] = {
    # ---- layers
    "layer-name-missing": Case(lambda f: Explainer(TinyNet(), "gradcam", layers="conv"),
                               ["'conv'", "close matches", "'conv1'", "'conv2'"]),
    "layer-name-in-program": Case(lambda f: Explainer(TinyNet(), "relu(sum_c(A@cnv2))"), ["'cnv2'", "'conv2'"]),
    "conv-index-out-of-range": Case(lambda f: Explainer(TinyNet(), "gradcam", layers=5),
                                    ["index 5", "2 Conv2d", "-2..1"]),
    "conv-index-in-program": Case(lambda f: Explainer(TinyNet(), "relu(sum_c(G@-3 * A@-3))"), ["index -3", "-2..1"]),
    "slice-selects-no-layer": Case(lambda f: Explainer(TinyNet(), "fuse(each(5:, sum_c(A)), sum)"),
                                   ["slice 5:", "none of the 2 conv layers"]),
    "layer-not-a-feature-map": Case(lambda f: _explain(TinyNet(), layers="fc"), ["'fc'", "Linear", "4-D", "(2, 3)"]),
    "layer-given-as-float": Case(lambda f: Explainer(TinyNet(), "gradcam", layers=1.5), ["layer", "1.5"]),
    "no-conv-default-layer": Case(lambda f: Explainer(MLP(), "gradcam"), ["no Conv2d", "layers="]),
    "no-conv-winsorcam": Case(lambda f: Explainer(MLP(), "winsorcam"), ["Conv2d"]),
    "no-conv-bundle": Case(lambda f: bundle_from_module(MLP(), input_size=(8, 8), device="cpu"),
                           ["MLP", "4-D", "(8, 8)", "convolutional"]),
    # ---- model outputs
    "output-tuple": Case(lambda f: _explain(TinyNet("tuple")), ["logits", "(B, K)", "tuple"]),
    "output-dict": Case(lambda f: _explain(TinyNet("dict")), ["logits", "(B, K)", "dict"]),
    "output-4d": Case(lambda f: _explain(TinyNet("4d")), ["logits", "(B, K)", "(2, 4, 8, 8)"]),
    "output-1d": Case(lambda f: _explain(TinyNet("1d")), ["logits", "(B, K)", "(2,)"]),
    "output-tuple-predicted-targets": Case(lambda f: _explain(TinyNet("tuple"), targets=None), ["logits", "tuple"]),
    "output-dict-predicted-targets": Case(lambda f: _explain(TinyNet("dict"), targets=None), ["logits", "dict"]),
    "output-4d-predicted-targets": Case(lambda f: _explain(TinyNet("4d"), targets=None), ["logits", "(2, 4, 8, 8)"]),
    "output-1d-predicted-targets": Case(lambda f: _explain(TinyNet("1d"), targets=None), ["logits", "(2,)"]),
    "output-cut-from-graph": Case(lambda f: _explain(TinyNet("detached")), ["score does not depend"]),
    # ---- targets and images
    "target-too-large": Case(lambda f: _explain(TinyNet(), targets=5), ["[5, 5]", "3 classes"]),
    "target-negative": Case(lambda f: _explain(TinyNet(), targets=[0, -1]), ["[-1]", "3 classes"]),
    "target-float": Case(lambda f: _explain(TinyNet(), targets=1.5), ["1.5", "integer"]),
    "target-text": Case(lambda f: _explain(TinyNet(), targets="cat"), ["'cat'", "class ind"]),
    "images-integer": Case(lambda f: _explain(TinyNet(), images=(X * 50).to(torch.uint8)), ["float", "uint8"]),
    "images-empty-batch": Case(lambda f: _explain(TinyNet(), images=X[:0]), ["empty", "(0, 3, 8, 8)"]),
    "images-wrong-channels": Case(lambda f: _explain(OneChannelNet()), ["OneChannelNet", "(2, 3, 8, 8)"]),
    "bundle-forward-fails": Case(lambda f: bundle_from_module(OneChannelNet(), input_size=(8, 8), device="cpu"),
                                 ["OneChannelNet", "(1, 3, 8, 8)"]),
    # ---- weights files
    "weights-wrong-architecture": Case(lambda f: _mobilenet(f, "resnet18"),
                                       lambda f: [str(f["resnet18"]), "'mobilenet_v2'", "missing keys: features.0.0.weight",
                                                  "unexpected keys: conv1.weight"]),
    "weights-wrong-class-count": Case(lambda f: _mobilenet(f, "mobilenet_v2_10_classes"),
                                      lambda f: [str(f["mobilenet_v2_10_classes"]),
                                                 "classifier.1.weight: file (10, 1280) vs model (1000, 1280)"]),
    "weights-whole-pickled-model": Case(lambda f: _mobilenet(f, "whole_model"),
                                        lambda f: [str(f["whole_model"]), "weights_only=True", "state_dict()"]),
    "weights-a-list": Case(lambda f: _mobilenet(f, "a_list"), lambda f: [str(f["a_list"]), "expected a state dict", "list"]),
    "weights-empty-dict": Case(lambda f: _mobilenet(f, "empty_dict"), lambda f: [str(f["empty_dict"]), "expected a state dict"]),
    "weights-truncated-file": Case(lambda f: _mobilenet(f, "truncated"), lambda f: [str(f["truncated"]), "cannot be read"]),
    "weights-empty-file": Case(lambda f: _mobilenet(f, "empty_file"), lambda f: [str(f["empty_file"]), "cannot be read"]),
    "weights-text-file": Case(lambda f: _mobilenet(f, "text_file"), lambda f: [str(f["text_file"]), "cannot be read"]),
    "weights-missing-file": Case(lambda f: _mobilenet(f, "missing"), lambda f: [str(f["missing"]), "not found"]),
    "weights-a-directory": Case(lambda f: _mobilenet(f, "directory"), lambda f: [str(f["directory"]), "is a directory"]),
    # ---- import paths
    "import-missing-module": Case(lambda f: _import("sycam_no_such_module_xyz:factory"),
                                  ["'sycam_no_such_module_xyz:factory'", "cannot import module"]),
    "import-missing-attribute": Case(lambda f: _import(f"{USER_MODULE}:nothing_here"),
                                     [f"'{USER_MODULE}:nothing_here'", "no attribute"]),
    "import-not-callable": Case(lambda f: _import(f"{USER_MODULE}:NOT_CALLABLE"), ["'NOT_CALLABLE'", "not callable"]),
    "import-returns-something-else": Case(lambda f: _import(f"{USER_MODULE}:returns_text"),
                                          [f"'{USER_MODULE}:returns_text'", "returned str", "nn.Module or a ModelBundle"]),
    "import-returns-non-logit-model": Case(lambda f: _import(f"{USER_MODULE}:tuple_model"),
                                           [f"{USER_MODULE}:tuple_model", "logits of shape (B, K)", "non-tensor"]),
    "import-no-colon-part": Case(lambda f: _import(f"{USER_MODULE}:"), ["package.module:factory"]),
    "import-factory-raises": Case(lambda f: _import(f"{USER_MODULE}:raises"),
                                  [f"{USER_MODULE}:raises", "the user's factory failed"]),
    "import-factory-needs-arguments": Case(lambda f: _import(f"{USER_MODULE}:needs_arguments"),
                                           [f"{USER_MODULE}:needs_arguments", "argument"]),
    "import-module-has-syntax-error": Case(lambda f: _import(f"{BROKEN_MODULE}:factory"),
                                           [f"{BROKEN_MODULE}:factory", "cannot import module", "SyntaxError"]),
    # ---- devices
    "device-unknown": Case(lambda f: load_model("mobilenet_v2", device="gpu"), ["'gpu'", "device"]),
}

_OUTCOMES: dict[str, BaseException | None] = {}


def outcome(name: str, files: dict[str, Path]) -> BaseException | None:
    """The exception a scenario raises (None when it raises nothing), computed once."""
    if name not in _OUTCOMES:
        try:
            CASES[name].trigger(files)
            _OUTCOMES[name] = None
        except Exception as err:  # noqa: BLE001 - what is raised is what the tests inspect
            _OUTCOMES[name] = err
    return _OUTCOMES[name]


def _params(attr: str) -> list[Any]:
    out = []
    for name, case in CASES.items():
        bug = getattr(case, attr)
        marks = [pytest.mark.xfail(strict=True, reason=bug)] if bug else []
        out.append(pytest.param(name, marks=marks, id=name))
    return out


@pytest.mark.filterwarnings("ignore:.*assuming ImageNet normalisation")
@pytest.mark.parametrize("name", _params("unclear"))
def test_message_says_what_and_where(name: str, files: dict[str, Path]) -> None:
    err = outcome(name, files)
    assert err is not None, f"{name}: no error was raised"
    case = CASES[name]
    parts = case.parts(files) if callable(case.parts) else case.parts
    msg = str(err)
    missing = [p for p in parts if p not in msg]
    assert not missing, f"{name}: message lacks {missing}: {type(err).__name__}: {msg}"
    assert "Traceback" not in msg and len(msg) < 2000


@pytest.mark.filterwarnings("ignore:.*assuming ImageNet normalisation")
@pytest.mark.parametrize("name", _params("not_sycam"))
def test_error_is_sycams_own(name: str, files: dict[str, Path]) -> None:
    err = outcome(name, files)
    assert isinstance(err, SycamError), f"{name}: {type(err).__name__}: {err}"


def test_layer_errors_are_layer_errors(files: dict[str, Path]) -> None:
    for name in ("layer-name-missing", "layer-name-in-program", "conv-index-out-of-range", "conv-index-in-program",
                 "slice-selects-no-layer", "no-conv-default-layer", "no-conv-winsorcam"):
        err = outcome(name, files)
        assert isinstance(err, LayerError) and isinstance(err, ValueError), f"{name}: {type(err).__name__}"


def test_a_named_feature_layer_works_without_conv2d() -> None:
    maps = _explain(NoConv2dNet(), layers="features")
    assert maps.shape == (2, 8, 8) and bool(torch.isfinite(maps).all())


def test_convs_selection_on_a_model_without_conv2d_is_a_layer_error() -> None:
    with pytest.raises(LayerError, match="Conv2d"):
        Explainer(NoConv2dNet(), "winsorcam", layers="features")


def test_cli_reports_a_bad_model_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from sycam.cli import main

    assert main(["layers", "--model", "sycam_no_such_module_xyz:factory"]) == 2
    err = capsys.readouterr().err
    assert "sycam layers:" in err and "cannot import module 'sycam_no_such_module_xyz'" in err


# ---------------------------------------------------------------------------- the model as it was found


class Fragile(nn.Module):
    """A model in a mixed state: training, with a frozen BatchNorm in eval mode, a frozen conv, a
    user hook and a gradient left from the user's own backward pass. ``fail`` makes the forward
    raise on the given call (``KeyboardInterrupt`` for an interruption)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)
        self.fail: tuple[int, type[BaseException]] | None = None
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.fail is not None and self.calls == self.fail[0]:
            raise self.fail[1]("the model failed on purpose")
        return self.fc(self.conv2(torch.relu(self.bn(self.conv1(x)))).mean((2, 3)))


def _snapshot(model: nn.Module) -> dict[str, Any]:
    hooks = {name: tuple(len(getattr(m, d)) for d in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks",
                                                     "_backward_pre_hooks", "_state_dict_hooks"))
             for name, m in model.named_modules()}
    return {
        "training": {name: m.training for name, m in model.named_modules()},
        "hooks": hooks,
        "global_hooks": (len(nn.modules.module._global_forward_hooks), len(nn.modules.module._global_forward_pre_hooks),
                         len(nn.modules.module._global_backward_hooks)),
        "grad": {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "params": {n: p.detach().clone() for n, p in model.state_dict().items()},
        "grad_enabled": torch.is_grad_enabled(),
    }


def _assert_same(before: dict[str, Any], after: dict[str, Any]) -> None:
    assert after["training"] == before["training"]
    assert after["hooks"] == before["hooks"]
    assert after["global_hooks"] == before["global_hooks"]
    assert after["requires_grad"] == before["requires_grad"]
    assert after["grad_enabled"] == before["grad_enabled"]
    for n, g in before["grad"].items():
        now = after["grad"][n]
        assert (g is None and now is None) or (g is not None and now is not None and torch.equal(g, now)), n
    for n, v in before["params"].items():
        assert torch.equal(v, after["params"][n]), n


def _fragile() -> tuple[Fragile, list[int]]:
    with torch.random.fork_rng():  # seeded weights without touching the global generator
        torch.manual_seed(0)
        model = Fragile().train()
    model.bn.eval()  # a frozen BatchNorm inside a training model
    model.conv1.weight.requires_grad_(False)
    seen: list[int] = []
    model.conv2.register_forward_hook(lambda m, i, o: seen.append(1))
    model(X).sum().backward()  # the user's own gradients, which sycam must not touch
    model.calls = 0
    seen.clear()
    return model, seen


FAILURES: dict[str, tuple[Callable[[Fragile], Any], type[BaseException]]] = {
    "target-out-of-range": (lambda m: Explainer(m, "gradcam")(X, 7), Exception),
    "layer-not-a-feature-map": (lambda m: Explainer(m, "gradcam", layers="fc")(X, 0), Exception),
    "forward-raises": (lambda m: setattr(m, "fail", (1, RuntimeError)) or Explainer(m, "gradcam")(X, 0), RuntimeError),
    "score-cam-forward-raises": (lambda m: setattr(m, "fail", (2, RuntimeError)) or Explainer(m, "scorecam")(X, 0),
                                 RuntimeError),
    "ablation-forward-raises": (lambda m: setattr(m, "fail", (2, RuntimeError)) or Explainer(m, "ablationcam")(X, 0),
                                RuntimeError),
    "interrupted-forward": (lambda m: setattr(m, "fail", (1, KeyboardInterrupt)) or Explainer(m, "gradcam")(X, 0),
                            KeyboardInterrupt),
    "interrupted-ablation": (lambda m: setattr(m, "fail", (2, KeyboardInterrupt)) or Explainer(m, "ablationcam")(X, 0),
                             KeyboardInterrupt),
    "program-runtime-error": (lambda m: Explainer(m, "sum_c(A) * 3e38 * 10")(X, 0), SycamError),
}


@pytest.mark.parametrize("grad_mode", ["enabled", "no_grad"])
@pytest.mark.parametrize("failure", list(FAILURES))
def test_model_is_left_as_found_after_an_error(failure: str, grad_mode: str) -> None:
    model, seen = _fragile()
    before = _snapshot(model)
    trigger, expected = FAILURES[failure]
    with torch.no_grad() if grad_mode == "no_grad" else torch.enable_grad():
        before["grad_enabled"] = torch.is_grad_enabled()
        with pytest.raises(expected):
            trigger(model)
        after = _snapshot(model)
    _assert_same(before, after)
    model.fail, seen[:] = None, []
    model(X)  # the user's hook still fires exactly once per forward, nothing of sycam's remains
    assert seen == [1]


def test_model_is_left_as_found_after_success() -> None:
    model, seen = _fragile()
    before = _snapshot(model)
    maps = Explainer(model, "gradcam")(X, torch.tensor([0, 2]))
    assert maps.shape == (2, 8, 8) and bool(torch.isfinite(maps).all())
    _assert_same(before, _snapshot(model))
    assert seen == [1]  # one forward pass for the gradients, the user's hook saw it


def test_capture_with_a_missing_layer_leaves_no_hook_behind() -> None:
    model, _ = _fragile()
    before = _snapshot(model)
    request = CaptureRequest(layers=("conv2", "not_a_layer"), grad_layers=frozenset({"conv2"}))
    with pytest.raises(KeyError, match=r"no module named 'not_a_layer'"):
        capture(model, X, torch.tensor([0, 1]), request)
    _assert_same(before, _snapshot(model))
