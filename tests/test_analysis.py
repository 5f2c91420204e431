"""utils/analysis.py on hand-made features and scores whose answers are known."""

import numpy as np
import pandas as pd
import pytest

from utils.analysis import (
    accuracy_by_decile,
    band_mass,
    confidence_validity,
    find_metadata,
    grouped_probe,
    map_correlation,
    match_metadata,
    pool_error_rates,
    probe,
    spearman,
)


def test_probe_reads_a_perfect_code_and_not_noise():
    rng = np.random.default_rng(0)
    train_y, test_y = np.repeat(np.arange(4), 50), np.repeat(np.arange(4), 25)
    code = np.eye(4) * 3.0
    perfect = probe(
        code[train_y] + rng.normal(0, 0.1, (200, 4)), train_y, code[test_y] + rng.normal(0, 0.1, (100, 4)), test_y
    )
    assert perfect["acc"] == 100.0
    assert perfect["chance"] == 25.0  # balanced: the majority answer is right on one test sample in four
    assert (perfect["n_train"], perfect["n_test"], perfect["labels"]) == (200, 100, 4)
    noise = probe(rng.normal(size=(200, 16)), train_y, rng.normal(size=(100, 16)), test_y)
    assert abs(noise["acc"] - 25.0) <= 15.0


def test_probe_fits_small_problems_on_one_blas_thread(monkeypatch):
    import threadpoolctl

    import utils.analysis as analysis

    seen = []

    def record(limits=None):
        seen.append(limits)
        return threadpoolctl.threadpool_limits(limits)

    monkeypatch.setattr(analysis, "threadpool_limits", record)
    train_y = np.repeat(np.arange(4), 50)
    x = np.eye(4)[train_y] * 3.0 + np.random.default_rng(0).normal(0, 0.1, (200, 4))
    small = analysis.probe(x, train_y, x, train_y)
    monkeypatch.setattr(analysis, "SMALL_PROBE", 200 * 4 * 4)  # this probe is now "large": every thread stays
    large = analysis.probe(x, train_y, x, train_y)
    assert seen == [1, None]
    assert small["acc"] == large["acc"] == 100.0


def test_probe_chance_is_the_majority_answer_on_the_held_out_labels():
    train_y = np.array([0, 1, 1, 1, 2, 2])  # majority label 1
    test_y = np.array([1, 1, 0, 2, 2])  # 2 of 5 are 1
    x = np.arange(6, dtype=float)[:, None]
    assert probe(x, train_y, x[:5], test_y)["chance"] == pytest.approx(40.0)
    with pytest.raises(ValueError):
        probe(x, np.zeros(6), x, np.zeros(6))


def test_grouped_probe_keeps_groups_with_enough_samples():
    groups = np.array(["a"] * 6 + ["b"] * 6 + ["c"] * 6 + ["d"] * 2)
    codes = {"a": [4.0, 0, 0], "b": [0, 4.0, 0], "c": [0, 0, 4.0], "d": [4.0, 4.0, 4.0]}
    rng = np.random.default_rng(1)
    x = np.array([codes[g] for g in groups]) + rng.normal(0, 0.1, (len(groups), 3))
    result = grouped_probe(x, groups, min_samples=4, folds=3)
    assert result["acc"] == 100.0
    assert (result["labels"], result["samples"], result["folds"]) == (3, 18, 3)
    assert result["n_test"] == 6 and result["chance"] == pytest.approx(100.0 / 3)
    assert grouped_probe(x, groups, min_samples=7, folds=3) is None  # no group has 7 samples


def test_spearman_of_monotone_and_constant_relations():
    x = np.arange(10.0)
    assert spearman(x, np.exp(x)) == pytest.approx(1.0, abs=1e-12)  # exactly 1 up to float rounding
    assert spearman(x, -(x**3)) == pytest.approx(-1.0, abs=1e-12)
    assert spearman(x, np.ones(10)) is None
    assert spearman([1, 2], [2, 3]) is None
    labels = np.array([0] * 5 + [1] * 5)
    intensity = np.array([1, 2, 3, 4, 5, 1, 2, 3, 4, 5], dtype=float)
    confidence = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.9, 0.8, 0.7, 0.6, 0.5])
    result = confidence_validity(confidence, intensity, labels, ["x", "y"])
    assert result["per_class"] == pytest.approx({"x": 1.0, "y": -1.0}, abs=1e-12)
    assert result["n"] == 10
    assert result["overall"] == pytest.approx(spearman(confidence, intensity))


def test_accuracy_by_decile_of_a_model_right_above_one_half():
    confidence = np.random.default_rng(2).permutation(np.arange(100) / 100)
    deciles = accuracy_by_decile(confidence, confidence >= 0.5)
    assert [d["acc"] for d in deciles] == [0.0] * 5 + [100.0] * 5
    assert [d["count"] for d in deciles] == [10] * 10
    assert deciles[0]["low"] == 0.0 and deciles[0]["high"] == pytest.approx(0.09)
    assert deciles[-1]["mean_confidence"] == pytest.approx(0.945)


def test_pool_error_rates_by_hand():
    in_pool = [True, True, True, False, False]
    labels = [0, 1, 2, 0, 1]
    pred = [0, 1, 0, 1, 1]  # one error in the pool (sample 2), one among the dropped (sample 3)
    result = pool_error_rates(in_pool, labels, pred)
    assert result["pool"] == {"count": 3, "errors": 1, "error_rate": pytest.approx(100 / 3)}
    assert result["dropped"] == {"count": 2, "errors": 1, "error_rate": 50.0}
    assert pool_error_rates([True, True], [0, 1], [0, 1])["dropped"]["error_rate"] is None


def test_band_mass_and_map_correlation():
    bottom = np.zeros((1, 6, 6))
    bottom[0, 4:, :] = 1.0
    assert band_mass(bottom) == {"top": 0.0, "middle": 0.0, "bottom": 1.0}
    uniform = band_mass(np.ones((2, 6, 6)))
    assert uniform == pytest.approx({"top": 1 / 3, "middle": 1 / 3, "bottom": 1 / 3})
    assert band_mass(np.zeros((2, 6, 6))) == {"top": None, "middle": None, "bottom": None}
    maps = np.random.default_rng(3).random((3, 5, 5))
    assert map_correlation(maps, 2 * maps + 1) == pytest.approx(1.0)
    assert map_correlation(maps, -maps) == pytest.approx(-1.0)
    assert map_correlation(maps, np.zeros_like(maps)) is None


def test_metadata_is_found_and_matched_by_file(tmp_path):
    (tmp_path / "train" / "happy").mkdir(parents=True)
    pd.DataFrame(
        {
            "split": ["train", "train", "test"],
            "path": ["train/happy/a.png", "train/happy/b.png", "test/happy/c.png"],
            "intensity": [0.5, 0.9, 0.2],
            "identity": ["train-0001", "train-0002", "test-0001"],
        }
    ).to_csv(tmp_path / "metadata.csv", index=False)
    csv = find_metadata(str(tmp_path / "train"))
    assert csv == str(tmp_path / "metadata.csv")
    frame, _ = match_metadata(csv, [str(tmp_path / "train/happy/b.png"), str(tmp_path / "train/happy/a.png")])
    assert list(frame["intensity"]) == [0.9, 0.5] and list(frame["identity"]) == ["train-0002", "train-0001"]
    frame, note = match_metadata(csv, [str(tmp_path / "train/happy/a.png"), str(tmp_path / "train/happy/z.png")])
    assert frame is None and "1 of the 2 images" in note
    pd.DataFrame({"path": ["train/happy/a.png"]}).to_csv(tmp_path / "train" / "metadata.csv", index=False)
    frame, note = match_metadata(find_metadata(str(tmp_path / "train")), [str(tmp_path / "train/happy/a.png")])
    assert frame is None and "identity" in note and "intensity" in note
    assert find_metadata(str(tmp_path / "train" / "happy")) == str(tmp_path / "train" / "metadata.csv")
