"""Losses of utils/losses.py against values computed by hand (python floats / numpy transcriptions)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from utils.labels import CLASSES_7, FER2013_CODES, RAFDB_FOCAL_ALPHA, VAD_SIGNS
from utils.losses import (
    _lse_series,
    _supcon_chunk,
    batch_class_weights,
    class_weighted_supcon,
    class_weighted_supcon_naive,
    focal_alpha_from_counts,
    focal_loss,
    kl_high_confidence,
    mmd_loss,
    orthogonality_loss,
    rank_regularization,
    vad_consistency_loss,
    vad_mse,
    vad_sign_matrix,
)


# ----------------------------------------------------------------------------------- orthogonality
def test_orthogonality_value_by_hand():
    e = [[3.0, 4.0], [1.0, 0.0]]
    n = [[0.0, 2.0], [1.0, 1.0]]
    # Row norms: e -> 5, 1; n -> 2, sqrt(2). Normalised rows (eps 1e-6 added to the norm).
    eh = [[3 / (5 + 1e-6), 4 / (5 + 1e-6)], [1 / (1 + 1e-6), 0.0]]
    r2 = math.sqrt(2) + 1e-6
    nh = [[0.0, 2 / (2 + 1e-6)], [1 / r2, 1 / r2]]
    # M = Ê^T N̂ (2×2): M_pq = Σ_b Ê_bp N̂_bq.
    m = [[sum(eh[b][p] * nh[b][q] for b in range(2)) for q in range(2)] for p in range(2)]
    expected = sum(m[p][q] ** 2 for p in range(2) for q in range(2)) / 4
    got = orthogonality_loss(torch.tensor(e, dtype=torch.float64), torch.tensor(n, dtype=torch.float64))
    assert got.item() == pytest.approx(expected, rel=1e-12)
    # Numbers in the clear: M ≈ [[0.7071, 0.6+0.7071], [0, 0.8]].
    assert expected == pytest.approx((0.5 + (0.6 + 0.5**0.5) ** 2 + 0.64) / 4, rel=1e-5)


def test_orthogonality_gradient_uses_detached_norm():
    torch.manual_seed(0)
    e = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    n = torch.randn(4, 3, dtype=torch.float64)
    orthogonality_loss(e, n).backward()

    # Hand gradient with the norm c_b = ‖e_b‖ + 1e-6 held constant:
    # L = (1/D²) Σ_pq M_pq², M = Ê^T N̂  =>  ∂L/∂Ê = (2/D²) N̂ M^T,  ∂L/∂e_b = ∂L/∂Ê_b / c_b.
    en, nn_ = e.detach().numpy(), n.numpy()
    c = np.linalg.norm(en, axis=1, keepdims=True) + 1e-6
    eh = en / c
    nh = nn_ / (np.linalg.norm(nn_, axis=1, keepdims=True) + 1e-6)
    m = eh.T @ nh
    expected = (2 / 9) * (nh @ m.T) / c
    np.testing.assert_allclose(e.grad.numpy(), expected, rtol=1e-10, atol=1e-12)

    # The non-detached version (norm inside the graph) has a different gradient.
    e2 = e.detach().clone().requires_grad_()
    eh2 = e2 / (e2.norm(dim=1, keepdim=True) + 1e-6)
    nh2 = n / (n.norm(dim=1, keepdim=True) + 1e-6)
    ((eh2.t() @ nh2) ** 2).mean().backward()
    assert (e2.grad - e.grad).abs().max().item() > 1e-3


# ------------------------------------------------------------------------------------------- focal
def test_focal_loss_per_class_alpha_by_hand():
    logits = [[2.0, 0.0, -1.0], [0.5, 0.5, 1.0], [0.0, 3.0, 0.0]]
    target = [0, 2, 1]
    alpha = [0.25, 0.5, 0.75]
    total = 0.0
    for row, y in zip(logits, target):
        z = sum(math.exp(v) for v in row)
        p = math.exp(row[y]) / z + 1e-8
        total += -alpha[y] * (1 - p) ** 2 * math.log(p)
    expected = total / 3
    got = focal_loss(torch.tensor(logits, dtype=torch.float64), torch.tensor(target), alpha, gamma=2.0)
    assert got.item() == pytest.approx(expected, rel=1e-12)
    # Sample 1 (class 2, p = e/(2e^0.5+e) ≈ 0.4519) carries the largest alpha: check its share alone.
    p1 = math.exp(1) / (2 * math.exp(0.5) + math.exp(1))
    assert p1 == pytest.approx(0.45186, abs=1e-5)
    # Alpha is applied per target class, not per row: permuting alpha changes the value.
    other = focal_loss(torch.tensor(logits, dtype=torch.float64), torch.tensor(target), [0.75, 0.5, 0.25])
    assert other.item() != pytest.approx(expected, rel=1e-6)


def test_focal_loss_rejects_wrong_alpha_length():
    with pytest.raises(ValueError):
        focal_loss(torch.zeros(2, 3), torch.tensor([0, 1]), [0.5, 0.5])


def test_focal_alpha_from_counts_rafdb():
    names = CLASSES_7
    counts = {"anger": 705, "disgust": 717, "fear": 281, "happy": 4772, "neutral": 2524, "sad": 1982, "surprise": 1290}
    alpha = focal_alpha_from_counts([counts[c] for c in names])
    assert names[int(np.argmin(alpha))] == "happy"
    assert names[int(np.argmax(alpha))] == "fear"
    assert min(alpha) == pytest.approx(0.2) and max(alpha) == pytest.approx(0.9)
    assert all(0 < a <= 1 for a in alpha)
    # Broadly the paper's alphas: every class within 0.15.
    assert np.max(np.abs(np.array(alpha) - np.array(RAFDB_FOCAL_ALPHA))) < 0.15
    # Anger by hand: 0.9 - 0.7 * ln(705/281) / ln(4772/281).
    assert alpha[0] == pytest.approx(0.9 - 0.7 * math.log(705 / 281) / math.log(4772 / 281), rel=1e-12)


def test_focal_alpha_from_counts_small_cases():
    # Counts 1, 10, 100: logs equally spaced -> 0.9, 0.55, 0.2.
    assert focal_alpha_from_counts([1, 10, 100]) == pytest.approx([0.9, 0.55, 0.2])
    assert focal_alpha_from_counts([5, 5, 5]) == pytest.approx([0.55, 0.55, 0.55])
    # A class absent from training counts as 1 and is the rarest.
    assert focal_alpha_from_counts([0, 100]) == pytest.approx([0.9, 0.2])


# ------------------------------------------------------------------------------ rank regularisation
def test_rank_regularization_active_branch():
    # B = 10 -> high group = top floor(7.0) = 7.
    a = torch.tensor([0.9, 0.1, 0.8, 0.5, 0.55, 0.52, 0.51, 0.53, 0.54, 0.56], requires_grad=True)
    high = [0.9, 0.8, 0.56, 0.55, 0.54, 0.53, 0.52]
    low = [0.51, 0.5, 0.1]
    expected = 0.15 - (sum(high) / 7 - sum(low) / 3)
    # Inactive check for this data with margin 0.15 would be: gap = 0.6286 - 0.37 = 0.2586 > 0.15.
    assert expected < 0
    loss = rank_regularization(a, margin=0.5)
    assert loss.item() == pytest.approx(0.5 - (sum(high) / 7 - sum(low) / 3), rel=1e-6)
    loss.backward()
    # d/da of (margin - mean_high + mean_low): -1/7 on the high group, +1/3 on the low group.
    g = a.grad.tolist()
    assert g[0] == pytest.approx(-1 / 7) and g[1] == pytest.approx(1 / 3) and g[6] == pytest.approx(1 / 3)


def test_rank_regularization_inactive_branch():
    a = torch.tensor([0.9, 0.1, 0.8, 0.5, 0.55, 0.52, 0.51, 0.53, 0.54, 0.56], requires_grad=True)
    loss = rank_regularization(a)  # gap 0.2586 > 0.15
    assert loss.item() == 0.0
    loss.backward()
    assert torch.all(a.grad == 0)


def test_rank_regularization_floor_of_ratio():
    # B = 3: floor(2.1) = 2 in the high group.
    a = torch.tensor([0.3, 0.2, 0.1])
    assert rank_regularization(a, margin=1.0).item() == pytest.approx(1.0 - (0.25 - 0.1))
    # B = 70: floor(0.7 * 70) = 49 (floating point 0.7*70 = 48.999...); 48 would give another value.
    vals = [0.5] * 48 + [0.4] + [0.3] * 21
    a = torch.tensor(vals, dtype=torch.float64)
    expected_49 = 1.0 - ((48 * 0.5 + 0.4) / 49 - 0.3)
    expected_48 = 1.0 - (0.5 - (0.4 + 21 * 0.3) / 22)
    got = rank_regularization(a, margin=1.0).item()
    assert got == pytest.approx(expected_49, rel=1e-12)
    assert got != pytest.approx(expected_48, rel=1e-6)


def test_rank_regularization_empty_group_is_graph_safe_zero():
    a = torch.tensor([0.7], requires_grad=True)  # floor(0.7) = 0 -> empty high group
    loss = rank_regularization(a)
    assert loss.item() == 0.0
    loss.backward()
    assert a.grad is not None and a.grad.item() == 0.0


# -------------------------------------------------------------------------------------- SupCon
def test_batch_class_weights():
    w = batch_class_weights(torch.tensor([0, 0, 1, 2, 0]), 4)
    assert w.tolist() == pytest.approx([1 - 3 / 5, 1 - 1 / 5, 1 - 1 / 5, 1 - 0 / 5])


def _hand_supcon_dims(f, y, num_classes, tau, base):
    """Direct transcription: anchors and contrasts are the D·B scalars f[i][v]."""
    b, d = len(f), len(f[0])
    w = [1 - y.count(c) / b for c in range(num_classes)]
    scalars = [(i, v, f[i][v]) for i in range(b) for v in range(d)]
    terms = []
    for i, v, sa in scalars:
        others = [(j, u, sc) for j, u, sc in scalars if (j, u) != (i, v)]
        log_denom = math.log(sum(math.exp(sa * sc / tau) for _, _, sc in others))
        pos = [sa * sc / tau - log_denom for j, _, sc in others if y[j] == y[i]]
        if pos:
            terms.append(w[y[i]] * sum(pos) / len(pos))
    return -(tau / base) * sum(terms) / len(terms)


def _hand_supcon_standard(f, y, num_classes, tau, base):
    b = len(f)
    w = [1 - y.count(c) / b for c in range(num_classes)]
    dot = [[sum(p * q for p, q in zip(f[i], f[j])) / tau for j in range(b)] for i in range(b)]
    terms = []
    for i in range(b):
        log_denom = math.log(sum(math.exp(dot[i][j]) for j in range(b) if j != i))
        pos = [dot[i][j] - log_denom for j in range(b) if j != i and y[j] == y[i]]
        if pos:
            terms.append(w[y[i]] * sum(pos) / len(pos))
    return -(tau / base) * sum(terms) / len(terms)


def test_supcon_dims_hand_loop_b3_d2():
    f = [[0.6, 0.8], [1.0, 0.0], [0.0, -1.0]]
    y = [0, 0, 1]
    feats = torch.tensor(f, dtype=torch.float64)
    labels = torch.tensor(y)
    expected = _hand_supcon_dims(f, y, 2, 0.5, 0.07)
    for chunk in (1, 2, 4, 6, None):
        got = class_weighted_supcon(feats, labels, 2, temperature=0.5, base_temperature=0.07, chunk_size=chunk)
        assert got.item() == pytest.approx(expected, rel=1e-12)
    naive = class_weighted_supcon_naive(feats, labels, 2, temperature=0.5, base_temperature=0.07)
    assert naive.item() == pytest.approx(expected, rel=1e-12)
    # Weights enter: class 0 has w = 1/3, class 1 w = 2/3. With equal weights the value differs.
    assert expected != pytest.approx(_hand_supcon_dims(f, [0, 0, 0], 2, 0.5, 0.07), rel=1e-6)
    # Default temperatures 0.07 / 0.07.
    got = class_weighted_supcon(feats, labels, 2)
    assert got.item() == pytest.approx(_hand_supcon_dims(f, y, 2, 0.07, 0.07), rel=1e-10)


def test_supcon_standard_hand_loop():
    f = [[0.6, 0.8, 0.0], [1.0, 0.0, 0.0], [0.0, -0.6, 0.8], [0.0, 0.0, 1.0], [0.5, 0.5, 0.5]]
    y = [0, 0, 1, 1, 2]  # sample 4 is alone in its class: no positive, left out of the mean
    feats = torch.tensor(f, dtype=torch.float64)
    expected = _hand_supcon_standard(f, y, 3, 0.1, 0.07)
    got = class_weighted_supcon(feats, torch.tensor(y), 3, temperature=0.1, base_temperature=0.07, mode="standard")
    assert got.item() == pytest.approx(expected, rel=1e-12)
    naive = class_weighted_supcon_naive(
        feats, torch.tensor(y), 3, temperature=0.1, base_temperature=0.07, mode="standard"
    )
    assert naive.item() == pytest.approx(expected, rel=1e-12)


def test_supcon_standard_without_positives_is_graph_safe_zero():
    feats = torch.randn(3, 4, requires_grad=True)
    loss = class_weighted_supcon(feats, torch.tensor([0, 1, 2]), 3, mode="standard")
    assert loss.item() == 0.0
    loss.backward()
    assert torch.all(feats.grad == 0)


@pytest.mark.parametrize(
    "b,d,chunks",
    [
        (3, 2, [1, 5, 6, 7]),
        (4, 3, [1, 4, 5, 11, 12]),  # N = 12: chunk dividing N, N-1, N
        (7, 5, [3, 8, 34, 35, 100]),  # N = 35: ragged last chunk
        (16, 8, [None, 7, 64, 127]),
        (64, 4, [None, 100, 255]),
    ],
)
def test_supcon_dims_chunked_matches_naive(b, d, chunks):
    gen = torch.Generator().manual_seed(b * 100 + d)
    feats = F.normalize(torch.randn(b, d, generator=gen), dim=1)
    labels = torch.randint(0, 4, (b,), generator=gen)
    ref = feats.clone().requires_grad_()
    loss_ref = class_weighted_supcon_naive(ref, labels, 4)
    loss_ref.backward()
    for chunk in chunks:
        x = feats.clone().requires_grad_()
        loss = class_weighted_supcon(x, labels, 4, chunk_size=chunk)
        loss.backward()
        assert loss.item() == pytest.approx(loss_ref.item(), abs=1e-5)
        torch.testing.assert_close(x.grad, ref.grad, atol=1e-5, rtol=0)


def test_supcon_dims_gradcheck():
    gen = torch.Generator().manual_seed(3)
    feats = torch.randn(5, 3, dtype=torch.float64, generator=gen).requires_grad_()
    labels = torch.tensor([0, 1, 0, 2, 1])
    assert torch.autograd.gradcheck(lambda x: class_weighted_supcon(x, labels, 3, chunk_size=4), (feats,))


@pytest.mark.parametrize("b,d,tau", [(16, 256, 0.07), (32, 64, 0.07), (8, 16, 0.2), (4, 2, 1.0)])
def test_supcon_dims_series_matches_chunked_and_naive(b, d, tau):
    """The default (exponential series) equals the chunked and the materialising forms, value and gradient."""
    gen = torch.Generator().manual_seed(b + d)
    feats = F.normalize(torch.randn(b, d, generator=gen), dim=1)
    labels = torch.randint(0, 3, (b,), generator=gen)
    assert _lse_series(feats.reshape(-1), tau) is not None  # unit-norm features take the series path
    grads, values = [], []
    for fn in (
        lambda x: class_weighted_supcon(x, labels, 3, tau, 0.07),
        lambda x: class_weighted_supcon(x, labels, 3, tau, 0.07, chunk_size=97),
        lambda x: class_weighted_supcon_naive(x, labels, 3, tau, 0.07),
    ):
        x = feats.clone().requires_grad_()
        loss = fn(x)
        loss.backward()
        values.append(loss.item())
        grads.append(x.grad)
    assert values[0] == pytest.approx(values[1], abs=2e-6) and values[0] == pytest.approx(values[2], abs=2e-6)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=0)
    torch.testing.assert_close(grads[0], grads[2], atol=1e-6, rtol=0)


def test_supcon_dims_series_gradcheck_and_fallback():
    gen = torch.Generator().manual_seed(5)
    feats = F.normalize(torch.randn(6, 4, dtype=torch.float64, generator=gen), dim=1).requires_grad_()
    labels = torch.tensor([0, 1, 0, 2, 1, 2])
    assert _lse_series(feats.detach().reshape(-1), 0.5) is not None
    assert torch.autograd.gradcheck(lambda x: class_weighted_supcon(x, labels, 3, temperature=0.5), (feats,))
    # Exponents beyond what float64 sums safely (max s²/τ = 100 here) fall back to the chunked form,
    # which still equals the naive one.
    big = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], dtype=torch.float64)
    assert _lse_series(big.reshape(-1), 0.01) is None
    got = class_weighted_supcon(big, torch.tensor([0, 0, 1]), 2, temperature=0.01)
    naive = class_weighted_supcon_naive(big, torch.tensor([0, 0, 1]), 2, temperature=0.01)
    assert got.item() == pytest.approx(naive.item(), rel=1e-12)
    assert _lse_series(torch.tensor([0.5]), 0.07) is None  # one scalar has no contrast


def test_supcon_default_chunk_bounded():
    n = 64 * 256
    chunk = _supcon_chunk(n, 4)
    assert chunk * n * 4 <= 16 * 2**20 and chunk >= 1
    assert _supcon_chunk(12, 4) == 12


# ------------------------------------------------------------------------------------------- MMD
def _numpy_mmd(x, y, mul=2.0, num=5):
    total = np.concatenate([x, y])
    n = len(total)
    dist = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            dist[i, j] = np.sum((total[i] - total[j]) ** 2)
    bw = dist.sum() / (n * n - n) / mul ** (num // 2)
    k = sum(np.exp(-dist / (bw * mul**i)) for i in range(num))
    b = len(x)
    return np.mean(k[:b, :b] + k[b:, b:] - k[:b, b:] - k[b:, :b]), bw


def test_mmd_bandwidth_and_value_by_hand():
    x = np.array([[0.0], [1.0]])
    y = np.array([[1.0], [3.0]])
    # Points 0, 1, 1, 3: squared distances of the unordered pairs 1, 1, 9, 0, 4, 4 -> sum over the
    # ordered pairs 38; bandwidth 38 / (4² - 4) / 2² = 0.791666...
    value, bw = _numpy_mmd(x, y)
    assert bw == pytest.approx(38 / 12 / 4)
    got = mmd_loss(torch.tensor(x), torch.tensor(y))
    assert got.item() == pytest.approx(value, rel=1e-12)


def test_mmd_matches_numpy_and_bandwidth_not_detached():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 3))
    y = rng.normal(size=(4, 3)) + 0.5
    xt = torch.tensor(x, requires_grad=True)
    loss = mmd_loss(xt, torch.tensor(y))
    assert loss.item() == pytest.approx(_numpy_mmd(x, y)[0], rel=1e-12)
    loss.backward()
    # Central differences of the numpy transcription (whose bandwidth depends on x).
    h = 1e-6
    num = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += h
        xm[idx] -= h
        num[idx] = (_numpy_mmd(xp, y)[0] - _numpy_mmd(xm, y)[0]) / (2 * h)
    np.testing.assert_allclose(xt.grad.numpy(), num, atol=1e-7)


def test_mmd_identical_sets_is_zero():
    x = torch.ones(3, 2)
    assert mmd_loss(x, x.clone()).item() == 0.0


# -------------------------------------------------------------------------------------------- KL
def test_kl_only_over_masked_rows():
    lc = np.array([[1.0, 0.0, -1.0], [5.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    lp = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 9.0], [1.0, 1.0, 0.0]])
    mask = [1, 0, 1]

    def softmax(v):
        e = np.exp(v - v.max())
        return e / e.sum()

    kl = [np.sum(softmax(lc[i]) * (np.log(softmax(lc[i])) - np.log(softmax(lp[i])))) for i in (0, 2)]
    expected = sum(kl) / 2
    lpt = torch.tensor(lp, requires_grad=True)
    got = kl_high_confidence(torch.tensor(lc), lpt, torch.tensor(mask))
    assert got.item() == pytest.approx(expected, rel=1e-12)
    got.backward()
    assert torch.all(lpt.grad[1] == 0) and torch.any(lpt.grad[0] != 0)


def test_kl_empty_mask_is_graph_safe_zero():
    lp = torch.randn(2, 3, requires_grad=True)
    loss = kl_high_confidence(torch.randn(2, 3), lp, torch.tensor([False, False]))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.all(lp.grad == 0)


# ------------------------------------------------------------------------------------------- VAD
def test_vad_sign_table_matches_method():
    assert VAD_SIGNS["anger"] == ("-", "+", "·")
    assert VAD_SIGNS["disgust"] == ("-", "+", "+")
    assert VAD_SIGNS["fear"] == ("-", "·", "-")
    assert VAD_SIGNS["happy"] == ("+", "+", "+")
    assert VAD_SIGNS["sad"] == ("-", "-", "-")
    assert VAD_SIGNS["surprise"] == ("·", "+", "-")
    assert VAD_SIGNS["neutral"] == ("0", "0", "·")
    assert VAD_SIGNS["contempt"] == ("·", "·", "·")


def test_vad_sign_matrix_by_name():
    m = vad_sign_matrix(CLASSES_7)
    assert m.shape == (7, 3)
    assert m[CLASSES_7.index("happy")].tolist() == [1.0, 1.0, 1.0]
    assert m[CLASSES_7.index("sad")].tolist() == [-1.0, -1.0, -1.0]
    assert m[CLASSES_7.index("neutral")][:2].tolist() == [0.0, 0.0]
    assert torch.isnan(m[CLASSES_7.index("neutral")][2])
    # FER2013's own order (Angry Disgust Fear Happy Sad Surprise Neutral) gets the rows of those names.
    fer_order = [FER2013_CODES[k] for k in range(7)]
    mf = vad_sign_matrix(fer_order)
    for i, name in enumerate(fer_order):
        torch.testing.assert_close(mf[i], m[CLASSES_7.index(name)], equal_nan=True)
    torch.testing.assert_close(vad_sign_matrix(["Angry", "Happy"]), m[[0, 3]], equal_nan=True)
    with pytest.raises(ValueError):
        vad_sign_matrix(["anger", "boredom"])


def test_vad_consistency_value_by_hand():
    classes = ["happy", "neutral", "fear"]
    signs = vad_sign_matrix(classes)
    vad = torch.tensor([[-0.5, 0.2, 0.3], [0.4, -0.1, 0.7]])
    weights = torch.tensor([[1.0, 0.0, 0.0], [0.2, 0.5, 0.3]])

    def relu(v):
        return max(v, 0.0)

    # sample 0, happy (+,+,+): relu(0.5) + relu(-0.2) + relu(-0.3) = 0.5
    s0 = 1.0 * (relu(0.5) + relu(-0.2) + relu(-0.3))
    # sample 1: happy (+,+,+) -> 0 + 0.1 + 0; neutral (0,0,·) -> 0.4 + 0.1; fear (-,·,-) -> 0.4 + 0.7
    s1 = 0.2 * (relu(-0.4) + relu(0.1) + relu(-0.7)) + 0.5 * (0.4 + 0.1) + 0.3 * (relu(0.4) + relu(0.7))
    expected = (s0 + s1) / 2
    assert expected == pytest.approx((0.5 + 0.02 + 0.25 + 0.33) / 2)
    got = vad_consistency_loss(vad, weights, signs)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_vad_consistency_gradient_moves_both_heads():
    signs = vad_sign_matrix(CLASSES_7)
    happy = CLASSES_7.index("happy")
    vad = torch.tensor([[-0.5, 0.3, 0.2]], requires_grad=True)
    onehot = F.one_hot(torch.tensor([happy]), 7).float()
    vad_consistency_loss(vad, onehot, signs).backward()
    # A happy sample with negative valence: dL/dV < 0, so gradient descent increases valence.
    assert vad.grad[0, 0].item() == pytest.approx(-1.0)
    assert vad.grad[0, 1].item() == 0.0 and vad.grad[0, 2].item() == 0.0

    logits = torch.zeros(1, 7, requires_grad=True)
    vad2 = torch.tensor([[-0.5, 0.3, 0.2]], requires_grad=True)
    vad_consistency_loss(vad2, logits.softmax(dim=1), signs).backward()
    assert vad2.grad.abs().sum().item() > 0
    assert logits.grad.abs().sum().item() > 0
    # Per-class penalties of this VAD: anger 0, disgust 0, fear 0.2, happy 0.5, neutral 0.8, sad 0.5,
    # surprise 0.2 (mean 2.2/7). dL/dz_c = p_c (pen_c - mean): happy's penalty is above the mean.
    assert logits.grad[0, happy].item() == pytest.approx((0.5 - 2.2 / 7) / 7, rel=1e-5)
    assert logits.grad[0, happy].item() > 0


def test_vad_mse_value_and_no_broadcast():
    pred = torch.tensor([[0.0, 1.0, 2.0], [1.0, 1.0, 1.0]])
    target = torch.tensor([[1.0, 1.0, 0.0], [1.0, -1.0, 1.0]])
    assert vad_mse(pred, target).item() == pytest.approx((1 + 0 + 4 + 0 + 4 + 0) / 6)
    with pytest.raises(ValueError):
        vad_mse(torch.zeros(4, 1), torch.zeros(4, 3))
    with pytest.raises(ValueError):
        vad_mse(torch.zeros(4), torch.zeros(4, 1))


def test_default_focal_alphas_are_the_papers_for_rafdb_and_the_rule_elsewhere():
    from utils.objectives import resolve_focal_alpha

    targets = [3] * 20 + [0, 1, 2, 4, 5, 6] * 2
    auto = [float(a) for a in focal_alpha_from_counts(torch.bincount(torch.tensor(targets), minlength=7))]
    for dataset in ("folder", "rafdb"):
        assert resolve_focal_alpha(None, CLASSES_7, targets, dataset) == list(RAFDB_FOCAL_ALPHA)
    for dataset in ("fer2013", "ferplus", "affectnet"):
        assert resolve_focal_alpha(None, CLASSES_7, targets, dataset) == auto
    assert auto != list(RAFDB_FOCAL_ALPHA) and auto[3] == pytest.approx(0.2)
