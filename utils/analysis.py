"""What the concepts are, measured (tools/analyse_concepts.py): linear probes of a feature for a label,
rank correlations of the emotional confidence with a ground-truth intensity, accuracy by confidence
decile, and the error rate inside and outside the high-score pools. Plain numpy / scikit-learn / scipy on
feature matrices; nothing here knows about models or datasets (the tool extracts the features).

Accuracies are percentages. A probe is scored on held-out samples only; its ``chance`` is the accuracy
of always answering the most frequent label of the probe's training samples, scored on the same held-out
samples (1/K on a balanced split)."""

import os
import warnings

import numpy as np
import pandas as pd
from scipy.stats import spearmanr
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

METADATA = "metadata.csv"  # written by tools/make_synthetic_faces.py beside its split folders
# a probe whose design matrix is smaller than this (samples x features x labels) fits on one BLAS thread: L-BFGS on
# a few hundred samples is many small matrix products, where starting the threads costs more than they save (the
# demo's 15 probes: 60 s on 2 threads, 10 s on one, the same accuracies); larger probes keep every thread
SMALL_PROBE = 10**8


def _majority_rate(train_y, test_y) -> float:
    values, counts = np.unique(train_y, return_counts=True)
    return 100.0 * float(np.mean(np.asarray(test_y) == values[np.argmax(counts)]))


def probe(train_x, train_y, test_x, test_y, C: float = 1.0, max_iter: int = 300) -> dict:
    """A linear probe: standardised features -> multinomial logistic regression (L2, ``C``) fitted on
    (train_x, train_y), scored on (test_x, test_y). Returns {"acc", "chance", "n_train", "n_test", "labels",
    "converged"} (``converged``: L-BFGS stopped before ``max_iter``; separable labels may not)."""
    train_x, test_x = np.asarray(train_x, dtype=np.float64), np.asarray(test_x, dtype=np.float64)
    train_y, test_y = np.asarray(train_y), np.asarray(test_y)
    labels = len(np.unique(train_y))
    if labels < 2:
        raise ValueError("a probe needs at least two labels among its training samples")
    model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))
    size = train_x.shape[0] * train_x.shape[1] * labels
    with warnings.catch_warnings(), threadpool_limits(1 if size < SMALL_PROBE else None):
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(train_x, train_y)
    return {
        "acc": 100.0 * float(np.mean(model.predict(test_x) == test_y)),
        "chance": _majority_rate(train_y, test_y),
        "n_train": int(len(train_y)),
        "n_test": int(len(test_y)),
        "labels": labels,
        "converged": bool(np.max(model[-1].n_iter_) < max_iter),
    }


def grouped_probe(x, groups, min_samples: int = 4, folds: int = 4, seed: int = 0, C: float = 1.0) -> dict | None:
    """A probe of a label with many values and few samples each (identity): only the values with at least
    ``min_samples`` samples are kept, and the accuracy is the mean over ``folds`` stratified folds (every
    kept value in every fold's training and held-out part). Returns the :func:`probe` keys (``acc`` and
    ``chance`` averaged over folds, ``n_train``/``n_test`` of one fold) plus ``folds`` and ``samples``, or
    None when fewer than two values qualify."""
    groups = np.asarray(groups)
    values, counts = np.unique(groups, return_counts=True)
    kept = values[counts >= max(min_samples, folds)]
    if len(kept) < 2:
        return None
    rows = np.flatnonzero(np.isin(groups, kept))
    x, y = np.asarray(x, dtype=np.float64)[rows], groups[rows]
    results = []
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y):
        results.append(probe(x[train], y[train], x[test], y[test], C=C))
    return {
        "acc": float(np.mean([r["acc"] for r in results])),
        "chance": float(np.mean([r["chance"] for r in results])),
        "n_train": results[0]["n_train"],
        "n_test": results[0]["n_test"],
        "labels": int(len(kept)),
        "converged": all(r["converged"] for r in results),
        "folds": folds,
        "samples": int(len(rows)),
    }


def spearman(x, y) -> float | None:
    """Spearman's rank correlation of x and y; None when either is constant or fewer than 3 pairs."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return float(spearmanr(x, y).statistic)


def confidence_validity(confidence, intensity, labels, classes: list) -> dict:
    """Spearman of confidence with the ground-truth intensity over all samples and within each class:
    {"overall": rho, "per_class": {class: rho}, "n": N}."""
    confidence, intensity, labels = map(np.asarray, (confidence, intensity, labels))
    return {
        "overall": spearman(confidence, intensity),
        "per_class": {
            name: spearman(confidence[labels == c], intensity[labels == c]) for c, name in enumerate(classes)
        },
        "n": int(len(confidence)),
    }


def accuracy_by_decile(confidence, correct, bins: int = 10) -> list[dict]:
    """The samples sorted by confidence and cut into ``bins`` groups of (nearly) equal size, lowest first:
    per group its confidence range and mean, the number of samples and the accuracy (%) on them."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    order = np.argsort(confidence, kind="stable")
    out = []
    for part in np.array_split(order, bins):
        if part.size == 0:
            continue
        scores = confidence[part]
        out.append(
            {
                "low": float(scores.min()),
                "high": float(scores.max()),
                "mean_confidence": float(scores.mean()),
                "count": int(part.size),
                "acc": 100.0 * float(correct[part].mean()),
            }
        )
    return out


def pool_error_rates(in_pool, labels, pred) -> dict:
    """How often the concept model is wrong (pred != label) inside the high-score pools and among the
    samples left out of them: {"pool": {...}, "dropped": {...}}, each {"count", "errors", "error_rate" (%)}."""
    in_pool = np.asarray(in_pool, dtype=bool)
    wrong = np.asarray(pred) != np.asarray(labels)
    out = {}
    for name, rows in (("pool", in_pool), ("dropped", ~in_pool)):
        count, errors = int(rows.sum()), int(wrong[rows].sum())
        out[name] = {"count": count, "errors": errors, "error_rate": 100.0 * errors / count if count else None}
    return out


def find_metadata(split_root: str) -> str | None:
    """The synthetic generator's metadata.csv for a split folder: in the folder itself or its parent."""
    root = os.path.abspath(split_root)
    for folder in (root, os.path.dirname(root)):
        candidate = os.path.join(folder, METADATA)
        if os.path.isfile(candidate):
            return candidate
    return None


def match_metadata(metadata_csv: str, image_paths: list[str]) -> tuple[pd.DataFrame | None, str]:
    """The metadata rows (``intensity``, ``identity`` ...) of ``image_paths`` (absolute, in that order),
    matched by file through the csv's ``path`` column (relative to the csv's folder). Returns (frame,
    note): the frame is None, and the note says why, when the file lacks those columns or does not
    cover every image."""
    frame = pd.read_csv(metadata_csv)
    missing = {"path", "intensity", "identity"} - set(frame.columns)
    if missing:
        return None, f"{metadata_csv} has no column(s) {sorted(missing)}"
    base = os.path.dirname(os.path.abspath(metadata_csv))
    frame.index = [os.path.normpath(os.path.join(base, p)) for p in frame["path"]]
    wanted = [os.path.normpath(os.path.abspath(p)) for p in image_paths]
    found = frame.index[frame.index.isin(wanted)]
    if len(set(found)) < len(set(wanted)):
        return None, f"{metadata_csv} describes {len(set(found))} of the {len(set(wanted))} images"
    return frame.loc[wanted].reset_index(drop=True), f"ground truth from {metadata_csv}"


def band_mass(maps, bands=("top", "middle", "bottom")) -> dict:
    """Where saliency maps (N x H x W, non-negative) put their mass: the share in each horizontal band of
    equal height (top third: hair and forehead; middle: brows, eyes, nose; bottom: mouth and jaw of a
    centred face), averaged over the maps that have any mass; None each when none has."""
    maps = np.asarray(maps, dtype=np.float64)
    rows = maps.sum(axis=2)  # N x H
    totals = rows.sum(axis=1)
    shares = np.stack([part.sum(axis=1) for part in np.array_split(rows, len(bands), axis=1)], axis=1)
    keep = totals > 0
    if not keep.any():
        return dict.fromkeys(bands)
    mean = (shares[keep] / totals[keep, None]).mean(axis=0)
    return {name: float(v) for name, v in zip(bands, mean)}


def map_correlation(first, second) -> float | None:
    """The mean Pearson correlation of paired maps (N x H x W each), over the pairs where both vary;
    None when no pair does."""
    values = [
        float(np.corrcoef(a.ravel(), b.ravel())[0, 1])
        for a, b in zip(np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64))
        if np.ptp(a) > 0 and np.ptp(b) > 0
    ]
    return float(np.mean(values)) if values else None
