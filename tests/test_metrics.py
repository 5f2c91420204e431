"""utils/metrics.py against scikit-learn and direct numpy computations."""

import os
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score, classification_report, confusion_matrix

from utils.labels import CLASSES_7
from utils.metrics import RegressionStats, classification_summary, confusion_counts, save_confusion_matrix


def _predictions():
    rng = np.random.default_rng(1)
    y_true = rng.integers(0, 7, size=300)
    y_true[y_true == 5] = 4  # class 5 ("sad") has no true sample
    y_pred = np.where(rng.random(300) < 0.6, y_true, rng.integers(0, 7, size=300))
    y_pred[y_pred == 2] = 1  # class 2 ("fear") is never predicted
    return y_true, y_pred


def test_confusion_counts_matches_sklearn_and_merges():
    y_true, y_pred = _predictions()
    full = confusion_counts(torch.tensor(y_true), torch.tensor(y_pred), 7)
    np.testing.assert_array_equal(full.numpy(), confusion_matrix(y_true, y_pred, labels=range(7)))
    parts = confusion_counts(torch.tensor(y_true[:101]), torch.tensor(y_pred[:101]), 7) + confusion_counts(
        torch.tensor(y_true[101:]), torch.tensor(y_pred[101:]), 7
    )
    assert torch.equal(parts, full)


def test_classification_summary_matches_sklearn():
    y_true, y_pred = _predictions()
    cm = confusion_matrix(y_true, y_pred, labels=range(7))
    got = classification_summary(cm, CLASSES_7)
    report = classification_report(
        y_true, y_pred, labels=list(range(7)), target_names=CLASSES_7, output_dict=True, zero_division=0
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "y_pred contains classes not in y_true"
        balanced = balanced_accuracy_score(y_true, y_pred)
    assert got["accuracy"] == pytest.approx(np.mean(y_true == y_pred), abs=1e-12)
    assert got["mean_class_accuracy"] == pytest.approx(balanced, abs=1e-12)
    assert got["macro_f1"] == pytest.approx(report["macro avg"]["f1-score"], abs=1e-12)
    assert got["macro_precision"] == pytest.approx(report["macro avg"]["precision"], abs=1e-12)
    assert got["weighted_f1"] == pytest.approx(report["weighted avg"]["f1-score"], abs=1e-12)
    assert got["total"] == 300
    for name in CLASSES_7:
        for key, sk in (("precision", "precision"), ("recall", "recall"), ("f1", "f1-score"), ("support", "support")):
            assert got["per_class"][name][key] == pytest.approx(report[name][sk], abs=1e-12), (name, key)
    assert got["per_class"]["sad"]["support"] == 0
    assert got["per_class"]["fear"]["precision"] == 0.0


def test_classification_summary_small_by_hand():
    cm = np.array([[3, 1], [0, 2]])  # 4 class-0 samples (3 right), 2 class-1 (both right)
    got = classification_summary(torch.tensor(cm), ["a", "b"])
    assert got["accuracy"] == pytest.approx(5 / 6)
    assert got["mean_class_accuracy"] == pytest.approx((3 / 4 + 1) / 2)
    assert got["per_class"]["b"]["precision"] == pytest.approx(2 / 3)
    assert got["per_class"]["b"]["f1"] == pytest.approx(2 * (2 / 3) / (2 / 3 + 1))
    with pytest.raises(ValueError):
        classification_summary(np.zeros((2, 2)), ["a", "b"])


def test_regression_stats_uneven_batches_merged_equal_direct():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(53, 3)) * [1.0, 2.0, 0.5] + [0.1, -0.3, 1.0]
    y = 0.7 * x + rng.normal(size=(53, 3)) * 0.4 + 0.2
    # Two "processes" with uneven batches each (1 + 10 + 15 rows and 27 rows).
    p0 = RegressionStats(3, names=["V", "A", "D"])
    for lo, hi in ((0, 1), (1, 11), (11, 26)):
        p0.update(torch.tensor(x[lo:hi]), torch.tensor(y[lo:hi]))
    p1 = RegressionStats(3).update(torch.tensor(x[26:]), torch.tensor(y[26:]))
    merged = RegressionStats.from_tensor(p0.as_tensor() + p1.as_tensor(), names=["V", "A", "D"])
    assert merged.count == 53
    got = merged.compute()
    np.testing.assert_allclose(got["mse"], np.mean((x - y) ** 2, axis=0), rtol=1e-12)
    np.testing.assert_allclose(got["mae"], np.mean(np.abs(x - y), axis=0), rtol=1e-12)
    pearson = [np.corrcoef(x[:, k], y[:, k])[0, 1] for k in range(3)]
    np.testing.assert_allclose(got["pearson"], pearson, rtol=1e-10)
    mx, my = x.mean(0), y.mean(0)
    cov = np.mean((x - mx) * (y - my), axis=0)
    ccc = 2 * cov / (x.var(0) + y.var(0) + (mx - my) ** 2)
    np.testing.assert_allclose(got["ccc"], ccc, rtol=1e-10)
    # Same figures whichever way the data was split.
    whole = RegressionStats(3).update(torch.tensor(x), torch.tensor(y)).compute()
    for key in ("mse", "mae", "pearson", "ccc"):
        np.testing.assert_allclose(got[key], whole[key], rtol=1e-12)
    flat = merged.as_dict()
    assert set(flat) >= {"V_mse", "A_pearson", "D_ccc"}
    assert flat["D_ccc"] == pytest.approx(ccc[2], rel=1e-10)


def test_regression_stats_ccc_by_hand():
    # x = [1, 2, 3], y = [2, 2, 5]: mx 2, my 3, var_x 2/3, var_y 2, cov (−1·−1 + 0 + 1·2)/3 = 1.
    s = RegressionStats(1).update(torch.tensor([[1.0], [2.0], [3.0]]), torch.tensor([[2.0], [2.0], [5.0]]))
    got = s.compute()
    assert got["ccc"][0] == pytest.approx(2 * 1 / (2 / 3 + 2 + 1))
    assert got["pearson"][0] == pytest.approx(1 / np.sqrt(2 / 3 * 2))
    assert got["mse"][0] == pytest.approx((1 + 0 + 4) / 3)
    assert got["mae"][0] == pytest.approx((1 + 0 + 2) / 3)


def test_regression_stats_rejects_broadcast_shapes():
    with pytest.raises(ValueError):
        RegressionStats(3).update(torch.zeros(4, 1), torch.zeros(4, 3))


def test_save_confusion_matrix_writes_both_files(tmp_path):
    cm = np.array([[5, 1, 0], [2, 3, 1], [0, 0, 0]])
    csv_path = tmp_path / "sub" / "confusion.csv"
    png_path = tmp_path / "sub" / "confusion.png"
    save_confusion_matrix(torch.tensor(cm), ["anger", "happy", "sad"], csv_path, png_path)
    frame = pd.read_csv(csv_path, index_col=0)
    assert list(frame.columns) == ["anger", "happy", "sad"]
    assert list(frame.index) == ["anger", "happy", "sad"]
    np.testing.assert_array_equal(frame.to_numpy(), cm)
    with open(png_path, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(png_path) > 1000
    assert sorted(os.listdir(tmp_path / "sub")) == ["confusion.csv", "confusion.png"]  # no temp files left
