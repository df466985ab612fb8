"""Exact values of every reference program on a tiny hand-built network (captum style).

The network is small enough that activations A, gradients G = dY/dA and scores Y follow by hand:

    x (1x4x4) -> conv1 (1x1, 2 ch) -> ReLU -> conv2 (2x2, stride 2, 3 ch) -> ReLU -> mean_hw -> fc (3 -> 5)

The default target layer is ``conv2`` (pre-ReLU, 2x2 grid), so the final maps are upsampled 2x2 -> 4x4.
Every expected value below is computed by independent float64 numpy code written in this file (explicit
loops for the convolutions, the chain rule for gradients, numpy's SVD for Eigen-CAM, explicit forward
passes for Score-CAM and Ablation-CAM), never by sycam's kernels. A literal anchor pins the numpy
reference itself to numbers derived by hand. Tolerance: 1e-6 (sycam computes in float32).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from sycam.compile import compile_program
from sycam.explainer import Explainer
from sycam.capture import capture
from sycam.programs import list_programs, load

TOL = 1e-6
# Finer-CAM's score adds a layer of cancellation (y_t − α y_j, then q_m (d_m − S) − α q_m in the
# gradient): on (X1, target 2) the raw map spans 0.083 while its summands are ~1, so float32 rounding
# (~6e-8 of the summands) becomes 1.0e-6 after min-max. The float64 test below checks it to 1e-10.
TOL_FINER = 2e-6

# ----------------------------------------------------------------------------- the network


@dataclass(frozen=True)
class Weights:
    """Hand-set weights of :class:`TinyNet` (float64 numpy)."""

    w1: np.ndarray  # (2,)       conv1 1x1 kernels
    b1: np.ndarray  # (2,)
    W2: np.ndarray  # (3, 2, 2, 2) conv2 kernels
    b2: np.ndarray  # (3,)
    V: np.ndarray  # (5, 3)      fc weights
    c: np.ndarray  # (5,)


def base_weights() -> Weights:
    W2 = np.zeros((3, 2, 2, 2))
    W2[0, 0] = [[1, 0], [0, 0]]  # A2_0 = top-left of R1_0 + bottom-right of R1_1 (per 2x2 block) - 0.5
    W2[0, 1] = [[0, 0], [0, 1]]
    W2[1, 1] = [[1, 1], [1, 1]]  # A2_1 = block sum of R1_1 - 0.75
    W2[2, 0] = [[1, -1], [0, 0]]  # A2_2 = R1_0[tl] - R1_0[tr] - R1_1[bl] + 0.25
    W2[2, 1] = [[0, 0], [-1, 0]]
    return Weights(
        w1=np.array([1.0, -1.0]),  # A1_0 = x, A1_1 = 1 - x
        b1=np.array([0.0, 1.0]),
        W2=W2,
        b2=np.array([-0.5, -0.75, 0.25]),
        V=np.array([[1.0, 2.0, -1.0], [-1.0, -0.5, -2.0], [0.5, 1.0, 1.0], [2.0, -1.0, 0.5], [0.0, 1.0, 2.0]]),
        c=np.array([0.0, 1.0, -0.5, 0.25, 0.5]),
    )


class TinyNet(nn.Module):
    """conv1 (1x1) -> ReLU -> conv2 (2x2, stride 2) -> ReLU -> global mean -> fc, weights from :class:`Weights`."""

    def __init__(self, w: Weights) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 2, 1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(2, 3, 2, stride=2)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(3, 5)
        f32 = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
        with torch.no_grad():
            self.conv1.weight.copy_(f32(w.w1).view(2, 1, 1, 1))
            self.conv1.bias.copy_(f32(w.b1))
            self.conv2.weight.copy_(f32(w.W2))
            self.conv2.bias.copy_(f32(w.b2))
            self.fc.weight.copy_(f32(w.V))
            self.fc.bias.copy_(f32(w.c))
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flat(self.pool(self.relu2(self.conv2(self.relu1(self.conv1(x)))))))


# The anchor input: A1_1 = 1 - x has no exact zeros, so ReLU's kink is never hit.
X0 = np.array([[0.5, 1.25, 2.0, 0.5], [1.5, 0.5, 0.25, -1.0], [2.0, 2.0, 0.75, 1.5], [0.5, 1.25, -1.0, 0.5]])
# A second input (chosen so that no A is exactly 0 and no tie decides anything)
X1 = np.array([[1.5, -0.5, 0.25, 2.5], [0.75, 1.75, -0.25, 1.0 / 3], [0.2, 1.4, 2.2, 0.6], [1.1, -0.7, 0.9, 1.6]])


# ----------------------------------------------------------------------------- numpy reference


def np_forward(w: Weights, x: np.ndarray, ablate: int | None = None) -> dict[str, np.ndarray]:
    """A1, R1, A2, R2 and the logits y for one image x (H x W, both even; 4x4 mostly); ``ablate``
    zeroes that channel of A2."""
    A1 = w.w1[:, None, None] * x[None] + w.b1[:, None, None]
    R1 = np.maximum(A1, 0)
    h, wd = x.shape[0] // 2, x.shape[1] // 2
    A2 = np.zeros((3, h, wd))
    for k in range(3):
        for i in range(h):
            for j in range(wd):
                A2[k, i, j] = np.sum(w.W2[k] * R1[:, 2 * i:2 * i + 2, 2 * j:2 * j + 2]) + w.b2[k]
    if ablate is not None:
        A2[ablate] = 0.0
    R2 = np.maximum(A2, 0)
    y = w.V @ R2.mean(axis=(1, 2)) + w.c
    return {"A1": A1, "R1": R1, "A2": A2, "R2": R2, "y": y}


def np_grads(w: Weights, f: dict[str, np.ndarray], dy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """G1 = dS/dA1 and G2 = dS/dA2 by the chain rule, given dS/dy (5,)."""
    h, wd = f["A2"].shape[1:]
    dR2 = (dy @ w.V)[:, None, None] / (h * wd) * np.ones((3, h, wd))  # mean over the h*w positions
    G2 = dR2 * (f["A2"] > 0)
    dR1 = np.zeros(f["A1"].shape)
    for k in range(3):
        for i in range(h):
            for j in range(wd):
                dR1[:, 2 * i:2 * i + 2, 2 * j:2 * j + 2] += w.W2[k] * G2[k, i, j]
    G1 = dR1 * (f["A1"] > 0)
    return G1, G2


def finer_dy(y: np.ndarray, t: int, k: int, alpha: float) -> tuple[float, np.ndarray, np.ndarray]:
    """Finer-CAM score S = Σ_j p_j (y_t − α y_j) / Σ_j p_j over the k classes j ≠ t with the closest
    logits, and dS/dy. With q = p restricted to C and renormalised (softmax over C):
    dS/dy_t = Σ q = 1;  dS/dy_m = q_m (d_m − S) − α q_m  for m ∈ C, where d_m = y_t − α y_m."""
    others = [j for j in range(len(y)) if j != t]
    comps = sorted(others, key=lambda j: abs(y[j] - y[t]))[:k]
    gaps = sorted(abs(y[j] - y[t]) for j in others)
    assert k == len(others) or gaps[k - 1] != gaps[k], "test input has a tie in the comparison classes"
    e = np.exp(y[comps] - y[comps].max())
    q = e / e.sum()
    d = y[t] - alpha * y[comps]
    S = float(np.sum(q * d))
    dy = np.zeros_like(y)
    dy[t] = 1.0
    for qi, di, j in zip(q, d, comps):
        dy[j] += qi * (di - S) - alpha * qi
    return S, dy, np.array(comps)


def interp_matrix(n_in: int, n_out: int) -> np.ndarray:
    """1-D bilinear resampling matrix, half-pixel centres (align_corners=False): output i reads input
    position (i + 0.5) n_in / n_out − 0.5, clamped at 0 and at n_in − 1."""
    U = np.zeros((n_out, n_in))
    for i in range(n_out):
        src = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = min(int(np.floor(src)), n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        lam = src - i0
        U[i, i0] += 1 - lam
        U[i, i1] += lam
    return U


def up(m: np.ndarray, size: tuple[int, int] = (4, 4)) -> np.ndarray:
    """Bilinear resampling of a map to ``size`` (identity when already that size)."""
    if m.shape == size:
        return m
    return interp_matrix(m.shape[0], size[0]) @ m @ interp_matrix(m.shape[1], size[1]).T


def minmax(m: np.ndarray) -> np.ndarray:
    """(m − min) / (max − min); a constant map becomes 0."""
    rng = m.max() - m.min()
    return (m - m.min()) / rng if rng > 0 else np.zeros_like(m)


def finish(raw: np.ndarray, size: tuple[int, int] = (4, 4)) -> np.ndarray:
    """The Explainer's last step: upsample to the input size, min-max per image."""
    return minmax(up(raw, size))


def relu(a: np.ndarray) -> np.ndarray:
    return np.maximum(a, 0)


def softmax(v: np.ndarray) -> np.ndarray:
    e = np.exp(v - v.max())
    return e / e.sum()


def expected_raw(name: str, w: Weights, x: np.ndarray, t: int) -> np.ndarray:
    """The raw map (at the layer's grid) each reference program should compute, from its paper formula."""
    f = np_forward(w, x)
    dy = np.eye(5)[t]  # default score: the raw logit y_t
    if name == "finercam":
        _, dy, _ = finer_dy(f["y"], t, k=3, alpha=1.0)
    G1, G2 = np_grads(w, f, dy)
    A, G = f["A2"], G2
    size = x.shape
    gradcam = lambda A_, G_: relu(np.einsum("k,kij->ij", G_.mean(axis=(1, 2)), A_))  # noqa: E731
    if name in ("gradcam", "finercam"):
        return gradcam(A, G)
    if name == "hirescam":
        return relu((G * A).sum(0))
    if name == "layercam":
        return relu((relu(G) * A).sum(0))
    if name == "xgradcam":
        wk = np.array([np.sum(A[k] / A[k].sum() * G[k]) for k in range(3)])
        return relu(np.einsum("k,kij->ij", wk, A))
    if name == "gradcampp":
        return relu(np.einsum("k,kij->ij", gradcampp_weights(A, G), A))
    if name == "micam":
        # w_k = MI of A_k (upsampled bilinearly to the image grid) with the image (one channel: its grey level)
        wk = np.array([hist_mi(up(A[k], size), x) for k in range(3)])
        return np.einsum("k,kij->ij", wk, A)
    if name == "integrative_cam":
        # per conv layer: Grad-CAM++'s map, min-max normalised, weighted by relu(sum G * A), on the input grid
        out = np.zeros(size)
        for A_, G_ in ((f["A1"], G1), (A, G)):
            m = minmax(relu(np.einsum("k,kij->ij", gradcampp_weights(A_, G_), A_)))
            out += relu(np.sum(G_ * A_)) * up(m, size)
        return out
    if name == "metacam":
        # each component's finished map votes for its top 20% pixels (ceil(0.2 N) of them, ties kept)
        votes = np.zeros(size)
        for comp in METACAM_COMPONENTS:
            m = finish(expected_raw(comp, w, x, t), size)
            n = int(np.ceil(0.2 * m.size))
            # ties: within 1e-5 of the map's range of the n-th largest (values equal in exact arithmetic)
            votes += m >= np.sort(m.ravel())[::-1][n - 1] - 1e-5 * (m.max() - m.min())
        return votes
    if name == "scorecam":
        S = np.zeros(3)
        for k in range(3):
            mask = minmax(up(A[k], size))
            S[k] = np_forward(w, x * mask)["y"][t]
        return relu(np.einsum("k,kij->ij", softmax(S), A))
    if name == "ablationcam":
        Y = f["y"][t]
        D = np.array([Y - np_forward(w, x, ablate=k)["y"][t] for k in range(3)])
        return relu(np.einsum("k,kij->ij", D / Y, A))
    if name == "eigencam":
        M = A.reshape(3, -1).T  # (HW, C): rows are positions
        M = M - M.mean(axis=0)
        _, _, Vt = np.linalg.svd(M)
        proj = M @ Vt[0]
        ref = A.mean(0).reshape(-1)
        proj = proj if np.dot(proj, ref - ref.mean()) >= 0 else -proj
        return relu(proj.reshape(A.shape[1:]))
    if name == "layeravg":
        # per conv layer: min-max normalised Grad-CAM map, upsampled to the input, then averaged
        m1 = minmax(gradcam(f["A1"], G1))
        m2 = up(minmax(gradcam(A, G)), size)
        return (m1 + m2) / 2
    if name == "winsorcam":
        return winsor_raw(f, G1, G2, p=90.0)
    raise KeyError(name)


def gradcampp_weights(A: np.ndarray, G: np.ndarray) -> np.ndarray:
    """Grad-CAM++'s w_k = Σ_ij a_kij relu(g_kij), a = g² / (2g² + Σ_ab A_kab g³) (0/0 := 0), by loops."""
    wk = np.zeros(A.shape[0])
    for k in range(A.shape[0]):
        for i in range(A.shape[1]):
            for j in range(A.shape[2]):
                g = G[k, i, j]
                if g == 0.0:
                    continue  # 0/0 := 0
                a = g**2 / (2 * g**2 + A[k].sum() * g**3)
                wk[k] += a * max(g, 0.0)
    return wk


def hist_mi(a: np.ndarray, b: np.ndarray) -> float:
    """Mutual information (nats) of two maps on one grid, from their 16 x 16 joint histogram: 16 equal
    bins over each map's [min, max], bin = min(floor(16 (v - min) / (max - min) + 1e-4), 15) (a value
    on an edge, as bilinear upsampling makes many, counts in the bin above); a constant map: 0.
    I = Σ p log(p / (p_a p_b)), by numpy."""
    a, b = a.ravel(), b.ravel()
    if a.max() == a.min() or b.max() == b.min():
        return 0.0
    ia, ib = (np.minimum(np.floor(16 * (v - v.min()) / (v.max() - v.min()) + 1e-4), 15).astype(int) for v in (a, b))
    joint = np.zeros((16, 16))
    np.add.at(joint, (ia, ib), 1.0)
    p = joint / joint.sum()
    outer = p.sum(1)[:, None] * p.sum(0)[None, :]
    nz = p > 0
    return float(np.sum(p[nz] * np.log(p[nz] / outer[nz])))


METACAM_COMPONENTS = ("gradcam", "gradcampp", "xgradcam", "layercam", "hirescam", "scorecam", "ablationcam", "eigencam")
#: programs whose raw map lies on the input grid (fused there), not on conv2's
INPUT_GRID = {"layeravg", "winsorcam", "metacam", "integrative_cam"}


def winsor_raw(f: dict[str, np.ndarray], G1: np.ndarray, G2: np.ndarray, p: float) -> np.ndarray:
    """Winsor-CAM on the two conv layers, at the largest grid (conv1, 4x4)."""
    maps, imps = [], []
    for A, G in ((f["A1"], G1), (f["A2"], G2)):
        wk = G.mean(axis=(1, 2))
        maps.append(minmax(relu(np.einsum("k,kij->ij", wk, A))))
        imps.append(max(wk.mean(), 0.0))
    imp = np.array(imps)
    pos = imp > 0
    if pos.any():
        tau = np.percentile(imp[pos], p)
        imp = np.where(pos, np.minimum(imp, tau), 0.0)
        lo, hi = imp[pos].min(), imp[pos].max()
        imp = np.where(pos, 0.1 + 0.9 * (imp - lo) / (hi - lo) if hi > lo else 1.0, 0.0)
    return imp[0] * maps[0] + imp[1] * up(maps[1], maps[0].shape)


def run(name_or_text: str, x: np.ndarray | list[np.ndarray], targets: int | list[int] | None,
        w: Weights | None = None, **kw) -> np.ndarray:
    """Explainer output (B, H, W) as float64 numpy."""
    net = TinyNet(w or base_weights())
    xs = np.stack(x) if isinstance(x, list) else x[None]
    images = torch.tensor(xs, dtype=torch.float32)[:, None]
    out = Explainer(net, name_or_text, layers="conv2", **kw)(images, targets)
    assert out.shape == (len(xs), *xs.shape[1:]) and out.dtype == torch.float32
    return out.double().numpy()


def assert_close(got: np.ndarray, want: np.ndarray, what: str, tol: float = TOL) -> None:
    diff = float(np.abs(got - want).max())
    assert diff < tol, f"{what}: max |sycam - expected| = {diff:.3g} >= {tol}\nsycam:\n{got}\nexpected:\n{want}"


# ----------------------------------------------------------------------------- anchors: the reference itself


def test_interp_matrix_matches_hand_values() -> None:
    # 2 -> 4, half-pixel centres: output i reads input i/2 − 1/4 (clamped): 0, 1/4, 3/4, 5/4 -> 1
    assert np.array_equal(interp_matrix(2, 4), np.array([[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]]))
    # and it is what torch does (the definition sycam states for its resize)
    m = torch.tensor([[1.0, -2.0, 0.5], [3.0, 0.25, 4.0]])
    want = torch.nn.functional.interpolate(m[None, None], size=(5, 7), mode="bilinear", align_corners=False)[0, 0]
    got = interp_matrix(2, 5) @ m.double().numpy() @ interp_matrix(3, 7).T
    assert np.abs(got - want.double().numpy()).max() < 1e-6


def test_numpy_reference_matches_hand_derivation() -> None:
    """A2, Y and G2 on X0, derived by hand (see the Weights comments), pin the numpy reference."""
    w = base_weights()
    f = np_forward(w, X0)
    # R1_0 = relu(x), R1_1 = relu(1 - x); per 2x2 block:
    # A2_0 = R1_0[tl] + R1_1[br] − 0.5:  TL 0.5+0.5−.5   TR 2+2−.5   BL 2+0−.5   BR .75+.5−.5
    # A2_1 = sum R1_1 − 0.75:            TL 1−.75        TR 3.25−.75 BL .5−.75   BR 2.75−.75
    # A2_2 = R1_0[tl] − R1_0[tr] − R1_1[bl] + .25: TL .5−1.25−0+.25  TR 2−.5−.75+.25  BL 2−2−.5+.25  BR .75−1.5−2+.25
    A2 = np.array([[[0.5, 3.5], [1.5, 0.75]], [[0.25, 2.5], [-0.25, 2.0]], [[-0.5, 1.0], [-0.25, -2.5]]])
    assert np.array_equal(f["A2"], A2)
    # mean_hw relu(A2) = (1.5625, 1.1875, 0.25); y_0 = 1.5625 + 2 * 1.1875 − 0.25 = 3.6875
    assert f["y"][0] == 3.6875
    assert np.allclose(f["y"], [3.6875, -1.65625, 1.71875, 2.3125, 2.1875])
    # G2 for target 0 = V[0, k] / 4 where A2_k > 0: (1/4, 1/2, −1/4) masked
    _, G2 = np_grads(w, f, np.eye(5)[0])
    assert np.array_equal(G2, np.array([[[0.25, 0.25], [0.25, 0.25]], [[0.5, 0.5], [0.0, 0.5]],
                                        [[0.0, -0.25], [0.0, 0.0]]]))
    # and sycam's capture sees exactly these
    net = TinyNet(w)
    caps = capture(net, torch.tensor(X0, dtype=torch.float32)[None, None], torch.tensor([0]),
                   compile_program(load("gradcam"), net, "conv2").request)
    assert np.array_equal(caps.A["conv2"][0].double().numpy(), A2)
    assert np.array_equal(caps.G["conv2"][0].double().numpy(), G2)
    assert float(caps.Y[0]) == 3.6875


def test_gradcam_literal_values() -> None:
    """Grad-CAM on X0, target 0, fully by hand.

    w = mean_hw(G2) = (1/4, 3/8, −1/16); L = relu(Σ w_k A2_k):
      TL .5/4 + .25·3/8 + .5/16 = 0.25      TR 3.5/4 + 2.5·3/8 − 1/16 = 1.75
      BL 1.5/4 − .25·3/8 + .25/16 = 0.296875 BR .75/4 + 2·3/8 + 2.5/16 = 1.09375
    Upsampled with U = [[1,0],[.75,.25],[.25,.75],[0,1]] (U L Uᵀ), then (· − 0.25) / 1.5.
    """
    L = np.array([[0.25, 1.75], [0.296875, 1.09375]])
    U = np.array([[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]])
    want = (U @ L @ U.T - 0.25) / 1.5
    assert want[0, 0] == 0.0 and want[0, 3] == 1.0  # the corners carry the extremes
    assert want[1, 1] == pytest.approx((0.75 * (0.75 * 0.25 + 0.25 * 1.75) + 0.25 * (0.75 * 0.296875 + 0.25 * 1.09375)
                                        - 0.25) / 1.5)
    assert_close(run("gradcam", X0, 0)[0], want, "Grad-CAM literal")
    assert_close(expected_raw("gradcam", base_weights(), X0, 0), L, "numpy reference Grad-CAM")


# ----------------------------------------------------------------------------- every reference program

PROGRAMS = ["gradcam", "gradcampp", "xgradcam", "layercam", "hirescam", "scorecam", "ablationcam", "eigencam",
            "finercam", "layeravg", "winsorcam", "micam", "metacam", "integrative_cam"]


#: reference programs whose exact test lives elsewhere (they re-run the model on mosaic feature maps
#: or masked inputs, which this file's numpy forward of TinyNet does not model)
COVERED_ELSEWHERE = {"reciprocam": "test_seeds_reforward.py", "reciprocam_onehot": "test_seeds_reforward.py",
                     "unioncam": "test_seeds_reforward.py"}


def test_every_reference_program_is_covered() -> None:
    assert sorted(PROGRAMS + list(COVERED_ELSEWHERE)) == list_programs(), \
        "a reference program was added or removed: cover it here"
    for name, test_file in COVERED_ELSEWHERE.items():
        assert f'load("{name}")' in (Path(__file__).parent / test_file).read_text(encoding="utf-8"), (name, test_file)


@pytest.mark.parametrize("name", PROGRAMS)
@pytest.mark.parametrize("x, t", [(X0, 0), (X0, 3), (X1, 2), (X1, 4)], ids=["x0-t0", "x0-t3", "x1-t2", "x1-t4"])
def test_reference_program_exact(name: str, x: np.ndarray, t: int) -> None:
    want_raw = expected_raw(name, base_weights(), x, t)
    assert want_raw.max() > want_raw.min(), f"{name}: degenerate test case (constant expected map)"
    want = finish(want_raw)
    tol = TOL_FINER if name == "finercam" else TOL
    assert_close(run(name, x, t)[0], want, f"{name} on target {t}", tol)
    # the raw map (before upsampling) too, where the program's grid is conv2's
    if name not in INPUT_GRID:
        net = TinyNet(base_weights())
        prog = compile_program(load(name), net, "conv2")
        caps = capture(net, torch.tensor(x, dtype=torch.float32)[None, None], torch.tensor([t]), prog.request)
        raw = prog.raw(caps, prog.param_values()).double().numpy()[0]
        scale = max(1.0, float(np.abs(want_raw).max()))
        assert_close(raw / scale, want_raw / scale, f"{name} raw map (relative to its scale)")


@pytest.mark.parametrize("name", PROGRAMS)
def test_reference_program_exact_float64(name: str) -> None:
    """In float64 the raw maps match the paper formulas to 1e-10 relative: no hidden epsilon (such as
    pytorch-grad-cam's 1e-6 in Grad-CAM++ or 1e-7 in XGrad-CAM) and no float32 rounding to hide it."""
    net = TinyNet(base_weights()).double()
    prog = compile_program(load(name), net, "conv2")
    for x, t in ((X0, 0), (X0, 3), (X1, 2), (X1, 4)):
        want = expected_raw(name, base_weights(), x, t)
        caps = capture(net, torch.tensor(x, dtype=torch.float64)[None, None], torch.tensor([t]), prog.request)
        raw = prog.raw(caps).numpy()[0]
        assert raw.dtype == np.float64
        diff = float(np.abs(raw - want).max() / np.abs(want).max())
        assert diff < 1e-10, f"{name} target {t}: relative max difference {diff:.3g}\n{raw}\nvs\n{want}"


def test_scorecam_scores_and_ablation_drops_by_direct_forward() -> None:
    """S_k and D_k themselves, from explicit forward passes of the numpy network."""
    w = base_weights()
    net = TinyNet(w)
    prog_s, prog_d = compile_program(load("scorecam"), net, "conv2"), compile_program(load("ablationcam"), net, "conv2")
    images = torch.tensor(np.stack([X0, X1]), dtype=torch.float32)[:, None]
    targets = torch.tensor([1, 3])
    S = capture(net, images, targets, prog_s.request).S["conv2"].double().numpy()
    D = capture(net, images, targets, prog_d.request).D["conv2"].double().numpy()
    for b, (x, t) in enumerate(((X0, 1), (X1, 3))):
        f = np_forward(w, x)
        for k in range(3):
            want_s = np_forward(w, x * minmax(up(f["A2"][k])))["y"][t]
            want_d = f["y"][t] - np_forward(w, x, ablate=k)["y"][t]
            assert abs(S[b, k] - want_s) < TOL, f"S[{b},{k}]: {S[b, k]} vs {want_s}"
            assert abs(D[b, k] - want_d) < TOL, f"D[{b},{k}]: {D[b, k]} vs {want_d}"
    # by hand for X0, t=1: zeroing channel k removes V[1,k] * mean relu(A2_k) from y_1:
    # V[1] = (−1, −.5, −2), mean relu(A2) = (1.5625, 1.1875, .25) -> D = (−1.5625, −.59375, −.5)
    assert np.allclose(D[0], [-1.5625, -0.59375, -0.5], atol=TOL)


def test_eigencam_sign_correlates_with_mean_activation() -> None:
    """Both SVD signs are valid; sycam keeps the one whose map correlates positively with mean_c(A)."""
    w = base_weights()
    for x in (X0, X1):
        net = TinyNet(w)
        prog = compile_program("pc1(A)", net, "conv2")
        caps = capture(net, torch.tensor(x, dtype=torch.float32)[None, None], torch.tensor([0]), prog.request)
        proj = prog.raw(caps).double().numpy()[0].reshape(4)
        A = np_forward(w, x)["A2"]
        ref = A.mean(0).reshape(4)
        assert np.dot(proj, ref - ref.mean()) > 0
        M = A.reshape(3, 4).T
        M = M - M.mean(0)
        _, s, Vt = np.linalg.svd(M)
        assert s[0] > s[1] * 1.01, "test input: the first principal component must be well separated"
        assert min(np.abs(proj - M @ Vt[0]).max(), np.abs(proj + M @ Vt[0]).max()) < TOL


def test_finer_score_value_and_comparison_classes() -> None:
    """The explained score Y under ``score finer(3, 1)`` and its comparison classes, by hand for X0, t=0.

    y = (3.6875, −1.65625, 1.71875, 2.3125, 2.1875); |y_j − y_0| = (5.34375, 1.96875, 1.375, 1.5):
    the 3 closest are classes 3, 4, 2 (class 1 is left out)."""
    w = base_weights()
    S, _, comps = finer_dy(np_forward(w, X0)["y"], 0, 3, 1.0)
    assert list(comps) == [3, 4, 2]
    net = TinyNet(w)
    prog = compile_program(load("finercam"), net, "conv2")
    caps = capture(net, torch.tensor(X0, dtype=torch.float32)[None, None], torch.tensor([0]), prog.request)
    assert abs(float(caps.Y[0]) - S) < TOL
    y = np.array([3.6875, -1.65625, 1.71875, 2.3125, 2.1875])
    p = np.exp(y) / np.exp(y).sum()
    assert S == pytest.approx(sum(p[j] * (y[0] - y[j]) for j in (2, 3, 4)) / sum(p[j] for j in (2, 3, 4)), abs=1e-12)


@pytest.mark.parametrize("k, alpha", [(2, 0.5), (4, 1.0), (1, 0.0)])
def test_finer_score_other_k_and_alpha(k: int, alpha: float) -> None:
    """``score finer(k, α)``: Grad-CAM of Σ p_j (y_t − α y_j) / Σ p_j over the k closest classes."""
    w = base_weights()
    for x, t in ((X0, 0), (X1, 3)):
        f = np_forward(w, x)
        _, dy, _ = finer_dy(f["y"], t, k, alpha)
        _, G2 = np_grads(w, f, dy)
        want = finish(relu(np.einsum("k,kij->ij", G2.mean(axis=(1, 2)), f["A2"])))
        got = run(f"score finer({k}, {alpha}); relu(sum_c(mean_hw(G) * A))", x, t)[0]
        assert_close(got, want, f"finer({k}, {alpha}) on target {t}")


@pytest.mark.parametrize("p", [0.0, 50.0, 100.0])
def test_winsorcam_params(p: float) -> None:
    w = base_weights()
    for x, t in ((X0, 0), (X1, 4)):
        f = np_forward(w, x)
        G1, G2 = np_grads(w, f, np.eye(5)[t])
        want = finish(winsor_raw(f, G1, G2, p))
        assert_close(run("winsorcam", x, t, params={"p": p})[0], want, f"winsorcam p={p} target {t}")


# ----------------------------------------------------------------------------- batches and degenerate maps


@pytest.mark.parametrize("name", PROGRAMS)
def test_batch_of_two_with_different_targets(name: str) -> None:
    """Each image of a batch is explained for its own target, exactly as when alone."""
    w = base_weights()
    got = run(name, [X0, X1], [3, 2])
    tol = TOL_FINER if name == "finercam" else TOL
    assert_close(got[0], finish(expected_raw(name, w, X0, 3)), f"{name} batch image 0", tol)
    assert_close(got[1], finish(expected_raw(name, w, X1, 2)), f"{name} batch image 1", tol)
    assert np.abs(got[0] - got[1]).max() > 0.05, "the two images' maps must differ for this test to mean anything"


@pytest.mark.parametrize("name", PROGRAMS)
def test_constant_input_gives_all_zeros(name: str) -> None:
    """A constant image makes every channel of A constant, so every map is constant: min-max gives 0
    everywhere (not NaN, not 1)."""
    x = np.full((4, 4), 0.75)
    got = run(name, x, 0)
    assert np.isfinite(got).all()
    assert np.array_equal(got, np.zeros_like(got)), f"{name}: constant map should normalise to zeros, got\n{got}"


def test_all_negative_gradcam_gives_zeros() -> None:
    """Target 1 has only negative fc weights; with conv2's bias raised every A2 entry is positive, so
    G2 = V[1, k] / 4 < 0 everywhere and Σ_k w_k A2_k < 0 at every position: ReLU gives the zero map."""
    w = replace(base_weights(), b2=np.array([5.0, 5.0, 5.0]))
    for x in (X0, X1):
        f = np_forward(w, x)
        assert (f["A2"] > 0).all()
        G1, G2 = np_grads(w, f, np.eye(5)[1])
        pre = np.einsum("k,kij->ij", G2.mean(axis=(1, 2)), f["A2"])
        assert (pre < 0).all()
        for name in ("gradcam", "hirescam", "xgradcam"):
            got = run(name, x, 1, w=w)
            assert np.array_equal(got, np.zeros_like(got)), f"{name}: expected the zero map, got\n{got}"
        # the same target through sycam's raw map: all zero before normalisation
        net = TinyNet(w)
        prog = compile_program(load("gradcam"), net, "conv2")
        caps = capture(net, torch.tensor(x, dtype=torch.float32)[None, None], torch.tensor([1]), prog.request)
        assert float(prog.raw(caps).abs().max()) == 0.0


def test_explainer_with_several_layers_averages_normalised_maps() -> None:
    """``Explainer(..., layers=[conv1, conv2])``: Grad-CAM per layer, min-max per layer, upsampled to the
    input, averaged, min-max again (pytorch-grad-cam's semantics) = the ``layeravg`` program here."""
    w = base_weights()
    net = TinyNet(w)
    images = torch.tensor(np.stack([X0, X1]), dtype=torch.float32)[:, None]
    got = Explainer(net, "gradcam", layers=["conv1", "conv2"])(images, [0, 4]).double().numpy()
    for b, (x, t) in enumerate(((X0, 0), (X1, 4))):
        assert_close(got[b], finish(expected_raw("layeravg", w, x, t)), f"two-layer Grad-CAM image {b}")


# A non-square input (4x8 -> conv2 grid 2x4), float32-exact so that numpy and torch see the same image
X2 = np.random.default_rng(5).uniform(-1.0, 2.5, (4, 8)).astype(np.float32).astype(np.float64)


@pytest.mark.parametrize("name", PROGRAMS)
def test_non_square_input(name: str) -> None:
    """A 4x8 image: the 2x4 maps are resized per axis (rows 2 -> 4, columns 4 -> 8)."""
    want_raw = expected_raw(name, base_weights(), X2, 0)
    assert want_raw.shape == ((4, 8) if name in INPUT_GRID else (2, 4))
    assert want_raw.max() > want_raw.min(), f"{name}: degenerate test case"
    tol = TOL_FINER if name == "finercam" else TOL
    assert_close(run(name, X2, 0)[0], finish(want_raw, (4, 8)), f"{name} on a 4x8 image", tol)


def test_eigencam_with_more_channels_than_positions() -> None:
    """A 2x4 image gives a 1x2 grid for 3 channels (C > HW: sycam takes the positions' Gram matrix).
    With two positions the centred matrix is ±(d/2, −d/2) with d = A[:, 0] − A[:, 1], so the projection is
    ±(|d|/2, −|d|/2) and the sign follows mean_c(A): the position with the larger channel mean wins."""
    x = X2[:2, :4]
    A = np_forward(base_weights(), x)["A2"][:, 0, :]  # (3, 2)
    d = A[:, 0] - A[:, 1]
    first_wins = A[:, 0].mean() > A[:, 1].mean()
    raw = np.array([[np.linalg.norm(d) / 2, 0.0]] if first_wins else [[0.0, np.linalg.norm(d) / 2]])
    assert_close(expected_raw("eigencam", base_weights(), x, 0), raw, "numpy reference")
    got = run("eigencam", x, 0)[0]
    assert_close(got, finish(raw, (2, 4)), "Eigen-CAM, C > HW")


def test_default_targets_are_the_top_class() -> None:
    """``explainer(images)`` explains each image's arg-max logit."""
    w = base_weights()
    tops = [int(np.argmax(np_forward(w, x)["y"])) for x in (X0, X1)]
    assert tops == [0, 4]  # y(X0) = (3.6875, −1.65625, 1.71875, 2.3125, 2.1875)
    got = run("gradcam", [X0, X1], None)
    assert_close(got, run("gradcam", [X0, X1], tops), "targets=None vs the arg-max targets")


@pytest.mark.parametrize("name", ["gradcam", "scorecam", "winsorcam"])
def test_chunked_batches_give_the_same_maps(name: str) -> None:
    """chunk_size=1 (one capture per image) gives the maps of one capture for the batch (up to float32
    rounding: torch's convolution may sum in another order for another batch size)."""
    whole = run(name, [X0, X1, X0], [1, 2, 4])
    chunked = run(name, [X0, X1, X0], [1, 2, 4], chunk_size=1)
    assert np.abs(whole - chunked).max() < TOL
    assert_close(chunked[2], finish(expected_raw(name, base_weights(), X0, 4)), f"{name} third image")
