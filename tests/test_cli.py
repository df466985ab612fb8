"""The command line and the user-facing Python API."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import sycam
from sycam.cli import main
from sycam.explainer import Explainer

TESTS = Path(__file__).resolve().parent


def test_check_prints_type_and_canonical_form(capsys):
    assert main(["check", "relu(sum_c(mean_hw(G) * A))"]) == 0
    out = capsys.readouterr().out
    assert "type:      Map" in out
    assert "canonical: relu(sum_c(A*mean_hw(G)))" in out


def test_check_syntax_error_exits_2_with_line_and_column(capsys):
    assert main(["check", "relu(sum_c(mean_hw(G) * ))"]) == 2
    err = capsys.readouterr().err
    assert "line 1, column 25" in err and "expected an expression" in err
    assert err.rstrip().endswith("^")


def test_check_type_error_exits_2(capsys):
    assert main(["check", "sum_hw(A)"]) == 2
    assert "type error at line 1, column 1" in capsys.readouterr().err


def test_check_reads_files_and_reference_names(tmp_path, capsys):
    path = tmp_path / "mine.cam"
    path.write_text("# my method\nlet w = relu(mean_hw(G));\nrelu(sum_c(w * A))\n")
    assert main(["check", str(path)]) == 0
    assert main(["check", "winsorcam"]) == 0
    assert "?p in [0, 100] default 90" in capsys.readouterr().out
    assert main(["check", str(tmp_path / "missing.cam")]) == 2
    assert "not found" in capsys.readouterr().err


REFERENCES = {"gradcam", "gradcampp", "xgradcam", "layercam", "hirescam", "scorecam", "ablationcam", "eigencam",
              "finercam", "layeravg", "winsorcam", "micam", "metacam", "integrative_cam", "reciprocam", "reciprocam_onehot",
              "unioncam"}


def test_programs_lists_the_references(capsys):
    # exact names, not substrings: `gradcampp` must not stand in for a deleted `gradcam`
    assert set(sycam.list_programs()) == REFERENCES
    assert {p.stem for p in (Path(sycam.__file__).parent / "programs").glob("*.cam")} == REFERENCES
    assert main(["programs"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert sorted(listed) == sorted(REFERENCES)  # one line each, no extra and none missing


def test_programs_listing_notices_a_deleted_reference(tmp_path, monkeypatch, capsys):
    """The check above can fail: with gradcam.cam gone (gradcampp.cam still there) the names differ."""
    import shutil

    import sycam.programs as P

    copy = tmp_path / "programs"
    shutil.copytree(P.PROGRAM_DIR, copy)
    (copy / "gradcam.cam").unlink()
    monkeypatch.setattr(P, "PROGRAM_DIR", copy)
    assert main(["programs"]) == 0
    listed = {line.split()[0] for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert listed == REFERENCES - {"gradcam"} and set(sycam.list_programs()) != REFERENCES


def test_console_script_runs_without_torch_for_check():
    # `sycam check` must not pay for importing torch
    code = "import sys; from sycam.cli import main; main(['check', 'relu(sum_c(G * A))']); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("False")


def _tiny():
    sys.path.insert(0, str(TESTS))
    try:
        from tiny_models import bundle
    finally:
        sys.path.remove(str(TESTS))
    return bundle()


def test_explain_writes_overlays(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))
    image = tmp_path / "img.png"
    Image.fromarray((np.random.default_rng(0).random((40, 50, 3)) * 255).astype(np.uint8)).save(image)
    gray = tmp_path / "gray.jpg"
    Image.fromarray((np.random.default_rng(1).random((30, 30)) * 255).astype(np.uint8), mode="L").save(gray)
    assert main(["explain", "--program", "winsorcam", "--model", "tiny_models:bundle", str(image), str(gray),
                 "--param", "p=50", "--out", str(tmp_path / "out")]) == 0
    written = sorted((tmp_path / "out").glob("*.png"))
    assert [p.name for p in written] == ["gray.winsorcam.png", "img.winsorcam.png"]
    with Image.open(written[0]) as im:
        assert im.size == (64, 64) and im.mode == "RGB"
    assert main(["explain", "--model", "tiny_models:bundle", str(tmp_path / "nope.png"), "--out", str(tmp_path / "o")]) == 2
    assert "nope.png" in capsys.readouterr().err


def test_explainer_api_targets_layers_and_model_state():
    bundle = _tiny()
    model = bundle.module
    model.train()
    model.stage1[0].weight.grad = torch.ones_like(model.stage1[0].weight)
    torch.manual_seed(0)
    x = torch.rand(3, 3, 64, 64)
    explain = sycam.Explainer(bundle, "gradcam")
    maps = explain(x, [1, 2, 3])
    assert maps.shape == (3, 64, 64) and float(maps.min()) >= 0 and float(maps.max()) <= 1
    assert model.training and torch.equal(model.stage1[0].weight.grad, torch.ones_like(model.stage1[0].weight))
    assert not model._forward_hooks and not model.stage3[0]._forward_hooks
    # an int target is the same for every image; None explains the prediction
    torch.testing.assert_close(explain(x, 2), explain(x, torch.tensor([2, 2, 2])))
    with torch.no_grad():
        model.eval()
        preds = model(bundle.normalize(x)).argmax(1)  # a bundle's explainer feeds the normalised images
        model.train()
    torch.testing.assert_close(explain(x), explain(x, preds))
    # several target layers: per-layer maps normalised at the input size and averaged (on the
    # plain module, which sees x as given: un-normalised, no map of these layers is constant)
    two = Explainer(model, "gradcam", layers=["stage2.0", "stage3.0"])(x, 1)
    one_a = Explainer(model, "gradcam", layers="stage2.0")(x, 1)
    one_b = Explainer(model, "gradcam", layers="stage3.0")(x, 1)
    expected = (one_a + one_b) / 2
    lo = expected.flatten(1).min(1).values[:, None, None]
    hi = expected.flatten(1).max(1).values[:, None, None]
    torch.testing.assert_close(two, (expected - lo) / (hi - lo), atol=1e-5, rtol=0)
    # chunking does not change results
    torch.testing.assert_close(Explainer(bundle, "gradcampp", chunk_size=1)(x, 1), Explainer(bundle, "gradcampp")(x, 1))


def test_explainer_normalises_with_a_bundle_and_feeds_a_module_as_given():
    bundle = _tiny()  # normalize: x - 0.5
    model = bundle.module
    seen: list[torch.Tensor] = []
    hook = model.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))
    torch.manual_seed(0)
    x = torch.rand(3, 3, 64, 64)
    try:
        with_bundle = Explainer(bundle, "gradcam")(x, [1, 2, 3])
        assert len(seen) == 1 and torch.equal(seen[0], x - 0.5)
        seen.clear()
        with_module = Explainer(model, "gradcam", layers=bundle.default_layer)(x - 0.5, [1, 2, 3])
        assert len(seen) == 1 and torch.equal(seen[0], x - 0.5)
        seen.clear()
        raw = Explainer(model, "gradcam", layers=bundle.default_layer)(x, [1, 2, 3])
        assert len(seen) == 1 and torch.equal(seen[0], x)
        seen.clear()
        Explainer(bundle, "gradcam")(x)  # the prediction is made on the normalised images too
        assert len(seen) == 2 and all(torch.equal(s, x - 0.5) for s in seen)
    finally:
        hook.remove()
    assert torch.equal(with_bundle, with_module)
    assert (raw - with_bundle).abs().max() > 0.05  # un-normalised images give other maps: the test can tell


def test_explainer_on_a_bundle_matches_sycam_explain(tmp_path, monkeypatch, capsys, mobilenet_weights, imagenet_dev):
    """``Explainer(load_model(...), "gradcam")`` on [0, 1] images gives the maps ``sycam explain``
    draws for the same image files (MobileNetV2 with its real ImageNet weights)."""
    import sycam.viz
    from sycam.data._io import image_to_tensor, load_rgb
    from sycam.models import load_model

    files = sorted((imagenet_dev / "images").iterdir())[:2]
    drawn: list[torch.Tensor] = []
    real = sycam.viz.save_overlay
    monkeypatch.setattr(sycam.viz, "save_overlay", lambda dest, image, cam, **kw: (drawn.append(cam), real(dest, image, cam, **kw)))
    args = ["explain", "--model", "mobilenet_v2", "--weights", str(mobilenet_weights), "--device", "cpu",
            "--program", "gradcam", "--out", str(tmp_path / "out"), *map(str, files)]
    assert main(args) == 0
    classes = [int(line.split("explained class ")[1].split()[0]) for line in capsys.readouterr().out.splitlines()]
    bundle = load_model("mobilenet_v2", weights=str(mobilenet_weights), device="cpu")
    images01 = torch.stack([image_to_tensor(load_rgb(f), 224) for f in files])
    assert 0.0 <= float(images01.min()) and float(images01.max()) <= 1.0
    maps = Explainer(bundle, "gradcam")(images01)  # targets: the predicted classes, as the CLI's
    with torch.no_grad():
        preds = bundle.module(bundle.normalize(images01)).argmax(1).tolist()
    assert preds == classes and len(drawn) == len(files)
    torch.testing.assert_close(maps, torch.stack(drawn), atol=1e-5, rtol=0)


def test_explainer_errors_are_sycam_errors():
    bundle = _tiny()
    with pytest.raises(sycam.SycamError, match="no module named 'stage9'"):
        Explainer(bundle, "gradcam", layers="stage9")
    with pytest.raises(sycam.SycamError, match="out of range"):
        Explainer(bundle, "gradcam", layers=12)
    with pytest.raises(sycam.ProgramSyntaxError):
        Explainer(bundle, "relu(sum_c(G *")
    with pytest.raises(sycam.SycamError, match="2 targets for 3 images"):
        Explainer(bundle, "gradcam")(torch.rand(3, 3, 64, 64), [0, 1])
