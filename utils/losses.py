"""Loss functions of CRPN (stages 1 and 3) and of the multi-task category + VAD system.

Every function here is a pure function of tensors; the formulas follow docs/method.md and are repeated
in each docstring. Conventions: B = batch size, C = number of classes, D = feature dimension.
"Graph-safe zero" means a zero scalar that is connected to the inputs (``x.sum() * 0``), so that
``loss.backward()`` works and DistributedDataParallel sees every parameter used.
"""

import math

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from utils.labels import CLASS_ALIASES, SIGN_CODES, VAD_SIGNS

__all__ = [
    "orthogonality_loss",
    "focal_loss",
    "focal_alpha_from_counts",
    "rank_regularization",
    "batch_class_weights",
    "class_weighted_supcon",
    "class_weighted_supcon_naive",
    "mmd_loss",
    "kl_high_confidence",
    "vad_sign_matrix",
    "vad_consistency_loss",
    "vad_mse",
]


def _zero_like_graph(*tensors):
    """A zero scalar attached to the graph of ``tensors`` (graph-safe zero)."""
    total = None
    for t in tensors:
        if torch.is_tensor(t) and t.is_floating_point():
            term = t.sum() * 0
            total = term if total is None else total + term
    if total is None:
        raise ValueError("graph-safe zero needs at least one floating-point tensor")
    return total


# ---------------------------------------------------------------------------------------------
# Stage 1
# ---------------------------------------------------------------------------------------------
def orthogonality_loss(e: torch.Tensor, n: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Disentanglement loss between emotion features E and non-emotion features N (both B×D).

    Ê = E / (‖E_i‖₂ + eps) and N̂ = N / (‖N_i‖₂ + eps) row by row, the norms **detached** (treated as
    constants in backward); M = ÊᵀN̂ (D×D);  L_orth = (1/D²) Σ_pq M_pq².
    """
    if e.dim() != 2 or e.shape != n.shape:
        raise ValueError(
            f"orthogonality_loss needs two B×D tensors of one shape, got {tuple(e.shape)} and {tuple(n.shape)}"
        )
    e_hat = e / (e.norm(dim=1, keepdim=True).detach() + eps)
    n_hat = n / (n.norm(dim=1, keepdim=True).detach() + eps)
    m = e_hat.t() @ n_hat
    return (m * m).mean()


def focal_loss(
    logits: torch.Tensor, target: torch.Tensor, alpha: torch.Tensor, gamma: float = 2.0, eps: float = 1e-8
) -> torch.Tensor:
    """Multi-class focal loss with per-class α.

    p_i = softmax(logits_i)[y_i] + eps;  L = (1/B) Σ_i −α_{y_i} (1 − p_i)^γ log p_i.

    ``alpha``: a sequence or 1-D tensor of C values in canonical class order. (1 − p_i) is clamped at 0
    (it can reach −eps when p_i rounds to 1), so a non-integer γ never produces NaN.
    """
    if logits.dim() != 2:
        raise ValueError(f"focal_loss needs B×C logits, got shape {tuple(logits.shape)}")
    num_classes = logits.shape[1]
    alpha = torch.as_tensor(alpha, dtype=logits.dtype, device=logits.device).flatten()
    if alpha.numel() != num_classes:
        raise ValueError(f"focal_loss got {alpha.numel()} alphas for {num_classes} classes")
    target = target.long().flatten()
    if target.numel() != logits.shape[0]:
        raise ValueError(f"focal_loss got {target.numel()} labels for {logits.shape[0]} rows")
    p = logits.softmax(dim=1).gather(1, target[:, None]).squeeze(1) + eps
    loss = -alpha[target] * (1.0 - p).clamp_min(0.0).pow(gamma) * p.log()
    return loss.mean()


def focal_alpha_from_counts(counts, low: float = 0.2, high: float = 0.9) -> list[float]:
    """Per-class focal α from training class counts (the automatic rule for datasets other than RAF-DB).

    Rule (log-frequency, min-max): with n_c clamped to at least 1,

        α_c = high − (high − low) · (log n_c − log n_min) / (log n_max − log n_min)

    so the rarest class gets ``high`` (0.9), the most frequent ``low`` (0.2), and classes in between
    are spaced by the logarithm of their frequency (a class 10× rarer is treated as much rarer, not
    10× more important). All α lie in [low, high] ⊂ (0, 1]. When every class has the same count the
    rule is undefined and every α is the midpoint (low + high) / 2 (a constant α only rescales the loss).
    The range [0.2, 0.9] is the range of the paper's RAF-DB alphas; on RAF-DB's training counts
    (anger 705, disgust 717, fear 281, happy 4772, neutral 2524, sad 1982, surprise 1290) the rule gives
    ≈ [0.67, 0.67, 0.90, 0.20, 0.36, 0.42, 0.52] against the paper's [0.7, 0.8, 0.9, 0.2, 0.4, 0.4, 0.6].

    Returns a list of floats in the order of ``counts``.
    """
    counts = [float(c) for c in (counts.tolist() if hasattr(counts, "tolist") else counts)]
    if not counts:
        raise ValueError("focal_alpha_from_counts needs at least one class count")
    if any(c < 0 for c in counts):
        raise ValueError(f"class counts must be non-negative, got {counts}")
    if not 0.0 < low <= high <= 1.0:
        raise ValueError(f"need 0 < low <= high <= 1, got low={low}, high={high}")
    logs = [math.log(max(c, 1.0)) for c in counts]
    lo, hi = min(logs), max(logs)
    if hi - lo <= 0.0:
        return [0.5 * (low + high)] * len(counts)
    return [high - (high - low) * (v - lo) / (hi - lo) for v in logs]


def rank_regularization(confidence: torch.Tensor, high_ratio: float = 0.7, margin: float = 0.15) -> torch.Tensor:
    """Rank regularisation of the per-sample emotional confidence a (B values).

    Sort a in descending order; the top k = ⌊high_ratio · B⌋ form the high group, the other B − k the
    low group;  L_RR = max(0, margin − (mean(a_high) − mean(a_low))).
    ⌊·⌋ is the mathematical floor of the decimal product (0.7·70 = 49, although 0.7*70 is
    48.99999999999999 in floating point). When either group would be empty (k = 0 or k = B, e.g. B = 1)
    the loss is a graph-safe zero.
    """
    a = confidence.flatten()
    b = a.numel()
    k = int(math.floor(high_ratio * b + 1e-9))
    if k <= 0 or k >= b:
        return _zero_like_graph(confidence)
    a_sorted, _ = torch.sort(a, descending=True)
    gap = a_sorted[:k].mean() - a_sorted[k:].mean()
    return torch.clamp(margin - gap, min=0.0)


def batch_class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-batch class weights w_c = 1 − n_c / B (n_c = samples of class c in the batch), a C vector."""
    labels = labels.long().flatten()
    if labels.numel() == 0:
        raise ValueError("batch_class_weights needs a non-empty batch")
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got range [{int(labels.min())}, {int(labels.max())}]")
    counts = torch.bincount(labels, minlength=num_classes)
    return 1.0 - counts.double() / labels.numel()


def _series_order(a, rel=1e-17):
    """Smallest K with Σ_{k>K} a^k/k! <= rel·e^a (the tail of the exponential series at |x| <= a)."""
    term, k = 1.0, 0
    while True:
        k += 1
        term *= a / k
        if k + 2 > a and term * a / (k + 1) / (1 - a / (k + 2)) <= rel * math.exp(a):
            return k


def _series_basis(s_hat, order):
    """W[a, k] = ŝ_a^k / sqrt(k!), k = 0..order: exp(ŝ_a ŝ_c) = Σ_k W[a, k] W[c, k]."""
    ones = torch.ones(s_hat.numel(), 1, dtype=s_hat.dtype, device=s_hat.device)
    steps = s_hat[:, None] / torch.arange(1, order + 1, dtype=s_hat.dtype, device=s_hat.device).sqrt()
    return torch.cumprod(torch.cat([ones, steps], dim=1), dim=1)


# The series form is used when its a-posteriori error bound on every Σ_{c≠a} exp(l_ac) is below this
# relative value (far below float32 resolution); otherwise the chunked form runs.
_SERIES_REL_TOL = 1e-10
_SERIES_MAX_EXPONENT = 40.0


def _lse_series(s, tau):
    """(lse, basis, R) by the exponential series in float64, or None when its error bound is too loose.

    l_ac = s_a s_c / τ = ŝ_a ŝ_c with ŝ = s/√τ, so Σ_c exp(l_ac) = Σ_k W[a,k] Σ_c W[c,k]
    (W = :func:`_series_basis`), truncated at K terms where the tail is negligible; the self term
    exp(ŝ_a²) is subtracted. Bound: N·e^A·(tail + ε·(K + 2 + log2 N)) relative to min_a R_a, A = max ŝ².
    """
    n = s.numel()
    if n < 2:
        return None
    s_hat = s.double() / math.sqrt(tau)
    a = float(s_hat.abs().max()) ** 2
    if not a <= _SERIES_MAX_EXPONENT:
        return None
    order = _series_order(a)
    basis = _series_basis(s_hat, order)
    r = basis @ basis.sum(dim=0) - torch.exp(s_hat * s_hat)
    bound = n * math.exp(a) * (1e-17 + 2.0**-52 * (order + 2 + math.log2(n)))
    r_min = float(r.min())
    if not r_min > 0 or bound > _SERIES_REL_TOL * r_min:
        return None
    return torch.log(r).to(s.dtype), basis, r


class _LogSumExpExcludingSelf(torch.autograd.Function):
    """lse_a = log Σ_{c ≠ a} exp(s_a · s_c / τ) for every a of a 1-D tensor s (N scalars), exactly and
    in O(N) memory. Gradients: ∂lse_a/∂s_a += Σ_c P_ac s_c / τ and ∂lse_a/∂s_c += P_ac s_a / τ,
    P_ac = exp(l_ac − lse_a) (P_aa = 0).

    Two computations of the same quantity:

    - **series** (default, ``chunk=None``): the logits are a rank-one product, so
      Σ_c exp(s_a s_c/τ) = Σ_k (s_a^k / k!) Σ_c (s_c/τ)^k, an exponential series truncated where its
      tail is below 1e-17 relative and evaluated in float64: O(N·K) time and memory, K ≈ 15-80 terms.
      The backward pass uses the same basis (Σ_c P_ac s_c/τ and Σ_a g_a P_ac s_a/τ are series of the
      same form). It runs only when an a-posteriori bound on its rounding and truncation error is below
      1e-10 relative (unit-norm features at τ = 0.07 always qualify); otherwise:
    - **chunked**: anchor chunks of the N×N logit matrix, recomputed in backward; a few chunk×N
      buffers of memory, O(N²) time.
    """

    @staticmethod
    def forward(ctx, s, tau, chunk):
        ctx.tau = tau
        series = _lse_series(s, tau) if chunk is None else None
        if series is not None:
            lse, basis, r = series
            ctx.save_for_backward(s, lse)
            ctx.series = (basis, r)
            return lse
        n = s.numel()
        chunk = chunk or _supcon_chunk(n, s.element_size())
        lse = torch.empty_like(s)
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            rows = torch.arange(stop - start, device=s.device)
            logits = torch.outer(s[start:stop], s).div_(tau)
            logits[rows, rows + start] = float("-inf")
            lse[start:stop] = torch.logsumexp(logits, dim=1)
        ctx.save_for_backward(s, lse)
        ctx.series = None
        ctx.chunk = chunk
        return lse

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_lse):
        s, lse = ctx.saved_tensors
        tau = ctx.tau
        if ctx.series is not None:
            basis, r = ctx.series
            s64 = s.double()
            t = s64 / tau
            self_term = torch.exp(s64 * t)
            g = grad_lse.double()
            anchor = g * (basis @ (t @ basis) - self_term * t) / r
            w = g * t / r
            contrast = basis @ (w @ basis) - w * self_term
            return (anchor + contrast).to(s.dtype), None, None
        chunk = ctx.chunk
        n = s.numel()
        grad = torch.zeros_like(s)
        finite = torch.isfinite(lse)
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            g = grad_lse[start:stop]
            rows = torch.arange(stop - start, device=s.device)
            a = s[start:stop]
            prob = torch.outer(a, s).div_(tau)
            prob[rows, rows + start] = float("-inf")
            prob.sub_(lse[start:stop, None]).exp_()
            prob.masked_fill_(~finite[start:stop, None], 0.0)
            grad[start:stop] += g * (prob @ s) / tau
            grad += ((g * a) @ prob) / tau
        return grad, None, None


# One chunk×N logit buffer of the chunked form: 16 MB (peak of forward + backward about two of them).
_SUPCON_CHUNK_BYTES = 16 * 2**20


def _supcon_chunk(n, element_size):
    return max(1, min(n, _SUPCON_CHUNK_BYTES // (element_size * max(n, 1))))


def _check_supcon_inputs(features, labels, num_classes, mode):
    if features.dim() != 2:
        raise ValueError(f"class_weighted_supcon needs B×D features, got shape {tuple(features.shape)}")
    labels = labels.long().flatten().to(features.device)
    if labels.numel() != features.shape[0]:
        raise ValueError(f"class_weighted_supcon got {labels.numel()} labels for {features.shape[0]} rows")
    if mode not in ("dims", "standard"):
        raise ValueError(f"class_weighted_supcon mode must be 'dims' or 'standard', got {mode!r}")
    weights = batch_class_weights(labels, num_classes).to(features.device)
    return labels, weights


def class_weighted_supcon(
    features, labels, num_classes, temperature=0.07, base_temperature=0.07, mode="dims", chunk_size=None
):
    """Class-weighted supervised contrastive loss L_CC (exact, bounded memory).

    Class weights per batch: w_c = 1 − n_c/B; every anchor is weighted by w of its own sample's label.
    For anchor a with positive set P(a) and contrast set A(a) (everything but a itself):

        mlpp_a = (1/|P(a)|) Σ_{p∈P(a)} l_ap − log Σ_{c∈A(a)} exp(l_ac)
        L = −(τ/τ_base) · mean_a( w_{y(a)} · mlpp_a )

    mode="standard": anchors/contrasts are the B feature vectors f_i (one view), l_ij = f_i·f_j/τ,
    P(i) = other samples with label y_i.

    mode="dims" (the reference "dimension views" form, default): the B×D features are B samples × D
    views of one dimension each, so anchors and contrasts are the N = D·B scalars s_(v,i) = f[i,v];
    l_(v,i),(u,j) = s_(v,i)·s_(u,j)/τ; P(v,i) = every scalar (u,j) with y_j = y_i except the anchor
    itself (other dimensions of the same sample included), so |P| = D·n_{y_i} − 1.
    The reference's row-max subtraction cancels exactly and is not needed. Computation: the positive
    term is closed form, Σ_P l = s_a·(S_{y_i} − s_a)/τ with S_y = Σ of all scalars of label-y samples;
    the log-sum-exp over the N − 1 contrasts is :class:`_LogSumExpExcludingSelf`: by default an
    exponential series in O(N) memory and O(N·K) time (the logits are a rank-one product), falling back
    to anchor chunks recomputed in backward (O(chunk·N) memory, never O(N²)) when the series' error
    bound is not met; ``chunk_size`` forces the chunked form with that many anchors per chunk.

    Anchors without any positive (a class present once in "standard" mode, or D = 1) are left out of
    the mean; if no anchor has a positive the loss is a graph-safe zero. The computation runs in at
    least float32 (half-precision features are upcast).
    """
    labels, weights = _check_supcon_inputs(features, labels, num_classes, mode)
    work_dtype = torch.promote_types(features.dtype, torch.float32)
    f = features.to(work_dtype)
    w = weights.to(work_dtype)[labels]  # B
    b, d = f.shape
    if mode == "standard":
        logits = (f @ f.t()) / temperature
        eye = torch.eye(b, dtype=torch.bool, device=f.device)
        pos = (labels[:, None] == labels[None, :]) & ~eye
        npos = pos.sum(dim=1)
        lse = torch.logsumexp(logits.masked_fill(eye, float("-inf")), dim=1)
        pos_sum = (logits * pos).sum(dim=1)
        valid = npos > 0
        if not bool(valid.any()):
            return _zero_like_graph(features)
        mlpp = pos_sum[valid] / npos[valid] - lse[valid]
        loss = -(temperature / base_temperature) * (w[valid] * mlpp).mean()
        return loss.to(features.dtype)

    # mode == "dims"
    npos = torch.bincount(labels, minlength=num_classes)[labels] * d - 1  # B
    valid = npos > 0
    if not bool(valid.any()):
        return _zero_like_graph(features)
    class_sum = torch.zeros(num_classes, dtype=work_dtype, device=f.device).index_add(0, labels, f.sum(dim=1))
    same_label_sum = class_sum[labels]  # B: S_{y_i}
    pos_mean = f * (same_label_sum[:, None] - f) / temperature / npos.clamp_min(1)[:, None].to(work_dtype)
    chunk = int(chunk_size) if chunk_size else None
    lse = _LogSumExpExcludingSelf.apply(f.reshape(-1), float(temperature), chunk).view(b, d)
    mlpp = (pos_mean - lse)[valid]  # anchors of valid samples, n_valid×D
    loss = -(temperature / base_temperature) * (w[valid, None] * mlpp).mean()
    return loss.to(features.dtype)


def class_weighted_supcon_naive(features, labels, num_classes, temperature=0.07, base_temperature=0.07, mode="dims"):
    """Plain materialising version of :func:`class_weighted_supcon` (same definition, same result).

    Builds the N×N logit matrix of the reference implementation (N = D·B in "dims" mode, laid out
    view-major as the reference's ``torch.cat(torch.unbind(features, dim=1))``; N = B in "standard"),
    subtracts the detached row max, masks self, takes the mean log-probability over positives and weights
    it by w_{y}. O(N²) memory: about 1 GB per N×N fp32 matrix at B=64, D=256. For tests and benchmarks.
    """
    labels, weights = _check_supcon_inputs(features, labels, num_classes, mode)
    work_dtype = torch.promote_types(features.dtype, torch.float32)
    f = features.to(work_dtype)
    b, d = f.shape
    if mode == "dims":
        contrast = f.t().reshape(-1, 1)  # index v*B + i  ->  f[i, v]
        lab = labels.repeat(d)
    else:
        contrast = f
        lab = labels
    n = contrast.shape[0]
    logits = contrast @ contrast.t() / temperature
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    not_self = 1.0 - torch.eye(n, dtype=work_dtype, device=f.device)
    mask = (lab[:, None] == lab[None, :]).to(work_dtype) * not_self
    exp_logits = torch.exp(logits) * not_self
    log_prob = logits - torch.log(exp_logits.sum(dim=1, keepdim=True))
    npos = mask.sum(dim=1)
    valid = npos > 0
    if not bool(valid.any()):
        return _zero_like_graph(features)
    mlpp = (mask * log_prob).sum(dim=1)[valid] / npos[valid]
    w = weights.to(work_dtype)[lab][valid]
    loss = -(temperature / base_temperature) * (w * mlpp).mean()
    return loss.to(features.dtype)


# ---------------------------------------------------------------------------------------------
# Stage 3
# ---------------------------------------------------------------------------------------------
def mmd_loss(x: torch.Tensor, y: torch.Tensor, kernel_mul: float = 2.0, kernel_num: int = 5) -> torch.Tensor:
    """Gaussian-kernel maximum mean discrepancy between targets x (B×D) and features y (B×D).

    Z = [x; y] (2B×D);  D_ij = ‖z_i − z_j‖²;  b = Σ_ij D_ij / ((2B)² − 2B) / kernel_mul^(kernel_num//2);
    K = Σ_{k=0}^{kernel_num−1} exp(−D / (b · kernel_mul^k));
    MMD = mean over the B×B blocks of (K_xx + K_yy − K_xy − K_yx).
    The bandwidth is NOT detached (as in the reference). It is floored at the smallest positive normal
    number so that 2B identical vectors give MMD = 0 instead of 0/0.
    """
    if x.dim() != 2 or x.shape != y.shape:
        raise ValueError(f"mmd_loss needs two B×D tensors of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    b = x.shape[0]
    if b < 1:
        raise ValueError("mmd_loss needs a non-empty batch")
    total = torch.cat([x, y], dim=0)
    n = total.shape[0]
    dist = ((total[:, None, :] - total[None, :, :]) ** 2).sum(dim=2)
    if n > 1:
        bandwidth = dist.sum() / (n * n - n)
    else:
        bandwidth = dist.sum()
    bandwidth = bandwidth / (kernel_mul ** (kernel_num // 2))
    bandwidth = bandwidth.clamp_min(torch.finfo(dist.dtype).tiny)
    kernels = sum(torch.exp(-dist / (bandwidth * kernel_mul**k)) for k in range(kernel_num))
    xx = kernels[:b, :b]
    yy = kernels[b:, b:]
    xy = kernels[:b, b:]
    yx = kernels[b:, :b]
    return torch.mean(xx + yy - xy - yx)


def kl_high_confidence(logits_concept: torch.Tensor, logits_percept: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """KL(softmax(logits_concept) ‖ softmax(logits_percept)) over the rows with mask = 1 only.

    = F.kl_div(log_softmax(logits_p[m]), softmax(logits_c[m]), reduction="batchmean")
    = (1/|m|) Σ_{i∈m} Σ_c q_ic (log q_ic − log p_ic),  q = softmax(logits_c), p = softmax(logits_p).
    A graph-safe zero when no row is selected. ``logits_concept`` is not detached here: the caller
    passes the frozen concept model's output (computed under no_grad).
    """
    if logits_concept.shape != logits_percept.shape or logits_percept.dim() != 2:
        raise ValueError(
            f"kl_high_confidence needs two B×C logit tensors of one shape, got "
            f"{tuple(logits_concept.shape)} and {tuple(logits_percept.shape)}"
        )
    sel = mask.flatten().to(logits_percept.device).bool()
    if sel.numel() != logits_percept.shape[0]:
        raise ValueError(f"kl_high_confidence got a mask of {sel.numel()} for {logits_percept.shape[0]} rows")
    if not bool(sel.any()):
        return _zero_like_graph(logits_percept)
    return F.kl_div(
        F.log_softmax(logits_percept[sel], dim=1), F.softmax(logits_concept[sel], dim=1), reduction="batchmean"
    )


# ---------------------------------------------------------------------------------------------
# Multi-task category + VAD
# ---------------------------------------------------------------------------------------------
def vad_sign_matrix(classes: list[str]) -> torch.Tensor:
    """The C×3 float code tensor of expected VAD signs for ``classes`` (a list of class names), by name.

    Row c = the (V, A, D) codes of ``classes[c]`` from VAD_SIGNS: +1 for "+", −1 for "−", 0 for "0"
    (near zero), NaN for "·" (free). Built by name, so FER2013 and RAF-DB label orders never mix. Names
    are canonical (utils.labels.CLASSES_7 / CLASSES_8); source spellings such as FER2013's "Angry" are
    accepted case-insensitively. An unknown name raises ValueError.
    """
    rows = []
    for name in classes:
        key = str(name).strip().lower()
        key = CLASS_ALIASES.get(key, key)
        if key not in VAD_SIGNS:
            raise ValueError(f"no expected VAD signs for class {name!r}; known classes: {', '.join(sorted(VAD_SIGNS))}")
        rows.append([SIGN_CODES[s] for s in VAD_SIGNS[key]])
    if not rows:
        raise ValueError("vad_sign_matrix needs at least one class name")
    return torch.tensor(rows, dtype=torch.float32)


def vad_consistency_loss(vad: torch.Tensor, weights: torch.Tensor, sign_matrix: torch.Tensor) -> torch.Tensor:
    """Differentiable sign-consistency penalty between category and VAD predictions.

    For sample b, class c, dimension d with predicted value v = vad[b, d] and code s = sign_matrix[c, d]:
        penalty = relu(−v) if s = +1,  relu(v) if s = −1,  |v| if s = 0,  0 if free (NaN);
    L = (1/B) Σ_b Σ_c weights[b, c] Σ_d penalty(b, c, d).
    ``weights`` (B×C) are class probabilities (softmax of the category head: the gradient then reaches
    both heads) or one-hot ground truth (the caller chooses). ``vad`` is B×3 (any B×K matching the
    matrix's K columns).
    """
    if vad.dim() != 2 or weights.dim() != 2 or sign_matrix.dim() != 2:
        raise ValueError("vad_consistency_loss needs vad B×K, weights B×C and sign_matrix C×K")
    if (
        weights.shape[0] != vad.shape[0]
        or weights.shape[1] != sign_matrix.shape[0]
        or sign_matrix.shape[1] != vad.shape[1]
    ):
        raise ValueError(
            f"vad_consistency_loss shapes do not match: vad {tuple(vad.shape)}, weights "
            f"{tuple(weights.shape)}, sign_matrix {tuple(sign_matrix.shape)}"
        )
    codes = sign_matrix.to(device=vad.device)
    dtype = torch.promote_types(vad.dtype, weights.dtype)
    pos = (codes == 1).to(dtype)
    neg = (codes == -1).to(dtype)
    zero = (codes == 0).to(dtype)
    w = weights.to(dtype)
    v = vad.to(dtype)
    per_sample = ((w @ pos) * F.relu(-v) + (w @ neg) * F.relu(v) + (w @ zero) * v.abs()).sum(dim=1)
    return per_sample.mean()


def vad_mse(pred: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Mean squared error per sample and per dimension: (1/(B·K)) Σ_b Σ_d (pred_bd − target_bd)².

    ``pred`` and ``target`` must have the same shape B×K (B×3 for VAD); anything else raises ValueError —
    never broadcast (the published code broadcast B×1 against B×3/B into B×B). reduction="none" returns
    the B×K squared errors.
    """
    if pred.shape != target.shape:
        raise ValueError(
            f"vad_mse needs prediction and target of one shape, got {tuple(pred.shape)} and {tuple(target.shape)}"
        )
    if pred.dim() != 2:
        raise ValueError(f"vad_mse needs B×K tensors, got shape {tuple(pred.shape)}")
    sq = (pred - target.to(pred.dtype)) ** 2
    if reduction == "none":
        return sq
    if reduction == "mean":
        return sq.mean()
    raise ValueError(f"vad_mse reduction must be 'mean' or 'none', got {reduction!r}")
