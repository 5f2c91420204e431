"""Stage-2 thresholds and stage-3 pool sampling, against hand computations."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from dataset_concept import build_dataset
from dataset_percept import PerceptTrainSet, collate_percept
from utils.confidence import per_class_thresholds
from utils.errors import UserError
from utils.objectives import PerceptObjective, pooled_concepts


def test_thresholds_by_hand_with_ties_and_tiny_classes():
    conf = [0.9, 0.1, 0.5, 0.5, 0.5, 0.3, 0.7, 0.2]
    labels = [0, 0, 0, 0, 0, 1, 1, 2]
    thresholds, counts, mask = per_class_thresholds(conf, labels, 3, 0.2)
    # class 0 sorted: .1 .5 .5 .5 .9, index floor(0.2*5)=1 -> 0.5 (ties at the threshold are all kept)
    # class 1 sorted: .3 .7, index floor(0.4)=0 -> 0.3; class 2: one sample, index 0 -> 0.2
    assert thresholds == [0.5, 0.3, 0.2] and counts == [5, 2, 1]
    assert mask.tolist() == [True, False, True, True, True, True, True, True]
    with pytest.raises(UserError, match="'c'"):
        per_class_thresholds([0.5, 0.6], [0, 1], 3, 0.2, classes=["a", "b", "c"])


def test_thresholds_follow_label_index_not_folder_creation_order(tmp_path):
    names = ["surprise", "anger", "neutral"]  # created in an order different from sorted
    for i, name in enumerate(names):
        os.makedirs(tmp_path / name)
        for j in range(3):
            Image.new("RGB", (8, 8), (i * 40, j * 40, 0)).save(tmp_path / name / f"{j}.png")
    dataset = build_dataset("folder", str(tmp_path), "train")
    assert dataset.classes == ["anger", "neutral", "surprise"]
    # confidence encodes the class name, so a threshold keyed by the wrong class would show
    level = {"anger": 0.1, "neutral": 0.5, "surprise": 0.9}
    conf = [level[dataset.classes[t]] + 0.01 * k for k, t in enumerate(dataset.targets)]
    thresholds, _, _ = per_class_thresholds(conf, dataset.targets, 3, 0.2)
    for c, name in enumerate(dataset.classes):
        assert level[name] <= thresholds[c] < level[name] + 0.1


class Items(torch.utils.data.Dataset):
    """A stand-in base dataset: image = its index, so pool members can be identified."""

    def __init__(self, targets):
        self.targets = targets
        self.classes = ["a", "b", "c"]

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, index):
        return {"image": torch.full((1, 2, 2), float(index)), "label": self.targets[index], "index": index}


def test_pool_draws_are_class_pure_k_sized_and_reproducible():
    targets = [0] * 6 + [1] * 4 + [2] * 3
    mask = [1, 1, 1, 1, 0, 0] + [1, 0, 0, 0] + [1, 1, 0]
    data = PerceptTrainSet(Items(targets), mask, k=3, pool_features="online", seed=1)
    pools = [set(np.flatnonzero(np.array(mask, bool) & (np.array(targets) == c))) for c in range(3)]
    for index in range(len(targets)):
        drawn = data.draw_pool(index)
        assert len(drawn) == 3 and set(drawn) <= pools[targets[index]]
    assert len(set(data.draw_pool(4))) == 3  # pool of 4 >= K: without replacement
    assert set(data.draw_pool(7)) == {6}  # pool of 1 < K: with replacement
    first = data.draw_pool(4).tolist()
    assert data.draw_pool(4).tolist() == first  # same (seed, epoch, index) -> same draw
    draws = set()
    for epoch in range(6):
        data.set_epoch(epoch)
        draws.add(tuple(data.draw_pool(4)))
    assert len(draws) > 1  # a new draw each epoch

    batch = collate_percept([data[4], data[0], data[12]])  # low, high, low
    assert batch["mask"].tolist() == [False, True, False]
    assert batch["pool"].shape == (6, 1, 2, 2) and batch["pool_owner"].tolist() == [0, 0, 0, 2, 2, 2]
    pooled = pooled_concepts(batch["pool"].flatten(1), batch["pool_owner"], 3)
    assert torch.allclose(pooled[0], batch["pool"][:3].flatten(1).mean(0)) and torch.all(pooled[1] == 0)

    bank = PerceptTrainSet(Items(targets), mask, k=3, pool_features="bank", seed=1)
    assert bank[4]["pool_index"].tolist() == first and "pool" not in bank[4]


def test_empty_pool_is_a_user_error():
    with pytest.raises(UserError, match="'b'"):
        PerceptTrainSet(Items([0, 0, 1]), [1, 0, 0], k=2)


def test_bank_fast_path_gives_the_online_losses_for_the_same_pool_images():
    """--pool_features bank (stage 2's features, no concept forward) and online (one concept forward of
    the batch and its pool images) give the same MMD and KL when the pool images are those the bank
    was made from; --concept_target self gives another MMD."""
    from models.concept import ConceptNet
    from models.percept import PerceptNet
    from utils.cli import check_percept_args, percept_parser

    torch.manual_seed(0)
    targets = [0, 0, 0, 1, 1, 1, 2, 2]
    mask = [True, False, True, True, True, False, True, False]
    images = torch.randn(len(targets), 3, 32, 32)

    class Faces(Items):
        def __getitem__(self, index):
            return {"image": images[index], "label": self.targets[index], "index": index}

    concept = ConceptNet(3).eval().requires_grad_(False)
    with torch.no_grad():
        out = concept.emotion_forward(images)
    bank = {"features": out["e"], "logits": out["logits"]}
    model = PerceptNet(3).eval()  # no dropout: both calls see the same network
    parts = {}
    for name, pool_features, fn_args in (
        ("online", "online", (concept, None)),
        ("bank", "bank", (None, bank)),
        ("self", None, (concept, None)),
    ):
        args = percept_parser().parse_args(
            [
                "--concept_target",
                "self" if name == "self" else "pool",
                "--pool_features",
                pool_features or "online",
                "--k",
                "2",
            ]
        )
        check_percept_args(args)
        data = PerceptTrainSet(Faces(targets), mask, k=2, pool_features=pool_features, seed=1)
        batch = collate_percept([data[i] for i in range(len(targets))])
        if name == "online":
            assert batch["pool"].shape[0] == 2 * mask.count(False)
        _, parts[name], _ = PerceptObjective(args, *fn_args)(model, batch)
    for key in ("mmd", "kl", "ce"):
        assert parts["bank"][key].item() == pytest.approx(parts["online"][key].item(), abs=1e-6), key
    assert parts["self"]["mmd"].item() != pytest.approx(parts["online"]["mmd"].item(), abs=1e-6)


def test_teacher_filter_keeps_only_correct_high_confidence_samples():
    """--teacher_filter correct: mask AND correct, by hand; a class the teacher never gets right keeps
    its unfiltered mask (else its pool would be empty)."""
    from utils.confidence import filter_by_correctness

    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2])
    mask = torch.tensor([1, 1, 0, 1, 1, 0, 1, 0]).bool()
    correct = torch.tensor([1, 0, 1, 0, 0, 1, 1, 1]).bool()
    filtered, kept = filter_by_correctness(mask, correct, labels, 3)
    assert filtered.tolist() == [True, False, False, True, True, False, True, False]
    assert kept == [1]
    pools = PerceptTrainSet(Items(labels.tolist()), filtered, k=2).pools
    assert [p.tolist() for p in pools] == [[0], [3, 4], [6]]


def test_teacher_quality_figures_and_warning():
    from utils.confidence import teacher_quality

    logits = torch.tensor([[2.0, 0, 0], [0, 2.0, 0], [2.0, 0, 0], [0, 0, 2.0]])
    bank = {"labels": torch.tensor([0, 1, 1, 0]), "logits": logits, "classes": ["a", "b", "c"]}
    figures, warning = teacher_quality(bank, 80.0, 50.0)
    assert figures == {"train_acc": 50.0, "eval_acc": 80.0, "chance": pytest.approx(100 / 3)}
    assert warning is None
    figures, warning = teacher_quality(bank, 40.0, 50.0)
    assert warning.startswith("warning: the concept model is weak (40.0 % on its eval split, 50.0 % on the training")
    assert "--teacher_filter correct" in warning
    _, warning = teacher_quality(bank, None, 60.0)  # no eval figure: judged on the training accuracy
    assert "50.0 % on the training images" in warning and "eval split" not in warning


def test_kl_temperature_auto_calibrates_an_under_confident_teacher_and_sharpens_the_kl_target():
    """--kl_temperature auto: fit_temperature recovers the scale of logits shrunk to a quarter (labels drawn
    from softmax of the full logits), the fitted T is the NLL minimum, its figures are the hand-computed
    ones, and stage 3's KL term is KL(softmax(logits_c / T) || softmax(logits_p)) by hand."""
    from dataset_percept import calibrate_kl_target
    from models.percept import PerceptNet
    from utils.cli import check_percept_args, percept_parser
    from utils.confidence import fit_temperature
    from utils.losses import kl_high_confidence

    generator = torch.Generator().manual_seed(0)
    full = 2.0 * torch.randn(6000, 5, generator=generator)
    labels = torch.multinomial(full.softmax(1), 1, generator=generator).squeeze(1)
    fit = fit_temperature(0.25 * full, labels)
    assert fit["temperature"] == pytest.approx(0.25, rel=0.05)
    shrunk = 0.25 * full.double()

    def nll(t):
        return float(torch.nn.functional.cross_entropy(shrunk / t, labels))

    t = fit["temperature"]
    assert fit["after"]["nll"] == pytest.approx(nll(t)) and nll(t) < min(nll(1.05 * t), nll(t / 1.05), nll(1.0))
    prob = (shrunk / t).softmax(1)
    assert fit["after"]["p_true"] == pytest.approx(float(prob[torch.arange(len(labels)), labels].mean()))
    assert fit["before"]["p_max"] == pytest.approx(float(shrunk.softmax(1).max(1).values.mean()))
    assert fit["after"]["p_max"] > fit["before"]["p_max"]  # T < 1 sharpens

    features = torch.nn.functional.normalize(torch.randn(8, 256, generator=generator), dim=1)
    bank = {"logits": 0.25 * full[:8], "labels": labels[:8], "features": features}
    args = percept_parser().parse_args(["--kl_temperature", "auto", "--pool_features", "bank"])
    check_percept_args(args)
    teacher = {"train_acc": 50.0}
    calibrate_kl_target(args, bank, teacher)
    refit = fit_temperature(bank["logits"], bank["labels"])["temperature"]
    assert args.kl_temperature == teacher["kl_temperature"] == refit
    assert teacher["kl_temperature_requested"] == "auto"
    default = percept_parser().parse_args([])
    calibrate_kl_target(default, bank, {})
    assert default.kl_temperature == 1.0

    args.kl_temperature = 0.5  # stage 3's objective divides the concept logits by T before the KL term
    model = PerceptNet(5, pretrained=None).eval()
    batch = {
        "image": torch.randn(8, 3, 32, 32, generator=generator),
        "label": labels[:8],
        "index": torch.arange(8),
        "mask": torch.tensor([1, 1, 0, 1, 0, 1, 1, 1]).bool(),
        "pool_index": torch.zeros(8, 2, dtype=torch.long),
    }
    _, parts, out = PerceptObjective(args, None, bank)(model, batch)
    expected = kl_high_confidence(2.0 * bank["logits"], out["logits"].float(), batch["mask"])
    assert parts["kl"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert parts["kl"].item() != pytest.approx(kl_high_confidence(bank["logits"], out["logits"], batch["mask"]).item())


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "warm"])
def test_kl_temperature_refuses_what_is_not_a_positive_number(value, capsys):
    from utils.cli import percept_parser

    with pytest.raises(SystemExit) as stop:
        percept_parser().parse_args(["--kl_temperature", value])
    assert stop.value.code == 2
    assert "--kl_temperature: must be 'auto' or a positive number" in capsys.readouterr().err
