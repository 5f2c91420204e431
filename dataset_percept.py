"""The stage-3 training set: each sample with its confidence mask and, when low-confidence, K members
of its class's high-score pool drawn at random each epoch (with replacement when the pool is
smaller than K).

The stage-2 artefacts (output/confidence/bank.pt) are joined by sample order and refused when
they were made for another training set, class list, input size or concept checkpoint.

Pool members travel in one of two forms (``--pool_features``):
- ``online``: their images, decoded and augmented like the sample's, stacked into ``pool``
  (sum of K over the batch's low-confidence samples) with ``pool_owner`` naming the batch row;
  the step encodes them with the frozen concept emotion branch;
- ``bank``: only their indices (``pool_index``, K per sample), looked up in the feature bank.
"""

import os

import numpy as np
import torch
from torch.utils.data import Dataset

from dataset_concept import collate_skip_none
from models.concept import frozen_concept, load_concept_checkpoint
from utils.checkpoint import load_checkpoint
from utils.cli import existing_file
from utils.confidence import filter_by_correctness, fit_temperature, teacher_quality
from utils.errors import UserError
from utils.files import sha256_file


def load_bank(confidence_dir: str, train_set, input_size: int, concept_sha256: str | None = None) -> dict:
    """bank.pt from stage 2, checked against this run's training set, input size and concept model."""
    path = os.path.join(confidence_dir, "bank.pt")
    if not os.path.isfile(path):
        raise UserError(f"{path} not found; run stage 2 first (python high_confidence.py) or pass --confidence_dir.")
    bank = load_checkpoint(path, "feature bank")
    needed = ("features", "logits", "labels", "mask", "classes", "input_size", "data_fingerprint", "concept_sha256")
    if not isinstance(bank, dict) or any(k not in bank for k in needed):
        raise UserError(f"{path} is not a stage-2 feature bank; rerun python high_confidence.py.")
    if bank["classes"] != train_set.classes:
        raise UserError(
            f"{path} was made for classes {bank['classes']}, this training set has {train_set.classes}; "
            f"rerun stage 2 on this data."
        )
    if bank["input_size"] != input_size:
        raise UserError(
            f"{path} was made at input size {bank['input_size']}, this run uses {input_size}; pass "
            f"--input_size {bank['input_size']} or rerun stage 2."
        )
    if bank["data_fingerprint"] != train_set.fingerprint() or len(bank["labels"]) != len(train_set):
        raise UserError(f"{path} was made for another training set than {train_set.root}; rerun stage 2 on it.")
    if not torch.equal(bank["labels"], torch.tensor(train_set.targets)):
        raise UserError(f"{path} labels do not match {train_set.root}; rerun stage 2 on it.")
    if concept_sha256 is not None and bank["concept_sha256"] != concept_sha256:
        raise UserError(
            f"{path} was made with another concept checkpoint than --concept_ckpt; pass the one stage 2 "
            f"used or rerun stage 2."
        )
    return bank


class PerceptTrainSet(Dataset):
    """Wraps a stage-1 style dataset; adds ``mask`` and the pooled concepts' sources."""

    def __init__(self, base, mask, k: int = 8, pool_features: str | None = "online", seed: int = 42):
        if pool_features not in ("online", "bank", None):
            raise ValueError(pool_features)
        self.base = base
        self.mask = torch.as_tensor(mask, dtype=torch.bool)
        self.k = k
        self.pool_features = pool_features
        self.seed = seed
        self.epoch = 0
        labels = np.asarray(base.targets)
        self.pools = [np.flatnonzero(self.mask.numpy() & (labels == c)) for c in range(len(base.classes))]
        for c, pool in enumerate(self.pools):
            if pool.size == 0 and (labels == c).any():
                raise UserError(f"class {base.classes[c]!r} has an empty high-score pool; rerun stage 2.")

    @property
    def classes(self):
        return self.base.classes

    @property
    def targets(self):
        return self.base.targets

    def __len__(self):
        return len(self.base)

    def set_epoch(self, epoch: int) -> None:
        """Pool draws depend on (seed, epoch, index) only: reproducible across workers and resumes."""
        self.epoch = epoch

    def draw_pool(self, index: int) -> np.ndarray:
        """K members of the sample's class pool, with replacement only when the pool has fewer than K."""
        pool = self.pools[self.base.targets[index]]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        return rng.choice(pool, size=self.k, replace=pool.size < self.k)

    def __getitem__(self, index):
        item = self.base[index]
        if item is None:
            return None
        item["mask"] = self.mask[index]
        if self.pool_features is None:
            return item
        members = self.draw_pool(index)
        if self.pool_features == "bank":
            item["pool_index"] = torch.from_numpy(members.astype(np.int64))
        elif not item["mask"]:
            images = [self.base[int(m)] for m in members]
            images = [member["image"] for member in images if member is not None]
            item["pool"] = torch.stack(images) if images else None
        return item


def collate_percept(batch: list) -> dict:
    """collate_skip_none, with online pool images concatenated and tagged with their batch row."""
    pools, owners = [], []
    row = 0
    for item in batch:
        if item is None:
            continue
        pool = item.pop("pool", None)
        if pool is not None:
            pools.append(pool)
            owners.append(torch.full((pool.shape[0],), row, dtype=torch.long))
        row += 1
    out = collate_skip_none(batch)
    if pools:
        out["pool"] = torch.cat(pools)
        out["pool_owner"] = torch.cat(owners)
    return out


def calibrate_kl_target(args, bank: dict, teacher: dict) -> None:
    """``--kl_temperature auto``: the temperature that calibrates the concept logits on the training images
    stage 2 scored replaces "auto" in ``args``; the fit and the requested value go into ``teacher``."""
    teacher["kl_temperature_requested"] = args.kl_temperature
    if args.kl_temperature == "auto":
        fit = fit_temperature(bank["logits"], bank["labels"])
        args.kl_temperature = fit["temperature"]
        teacher["kl_temperature_fit"] = fit
        before, after = fit["before"], fit["after"]
        print(
            f"--kl_temperature auto: T = {fit['temperature']:.3f} calibrates the concept model on the "
            f"{len(bank['labels'])} training images (mean p(true class) {before['p_true']:.3f} -> "
            f"{after['p_true']:.3f}, mean largest p {before['p_max']:.3f} -> {after['p_max']:.3f}, NLL "
            f"{before['nll']:.3f} -> {after['nll']:.3f}; train accuracy {teacher['train_acc']:.1f} %)",
            flush=True,
        )
    teacher["kl_temperature"] = args.kl_temperature


def concept_regularisation(args, train_set) -> tuple:
    """Stage 3's wiring of the concept regulariser (``--concept_target pool|self``).

    Reads stage 2's bank (checked against ``train_set``, the input size and, for online targets, the
    concept checkpoint), judges the concept model (its best eval accuracy and its accuracy on the scored
    training images; a warning below ``--weak_teacher_acc``), loads the frozen concept model when targets
    are encoded online, and wraps the training set with the confidence masks (restricted to correctly
    classified samples with ``--teacher_filter correct``) and pool draws. Returns (train set, concept
    model or None, bank features/logits on the device or None, concept checkpoint sha256, teacher figures).
    """
    online = args.pool_features == "online"
    concept = None
    concept_sha = None
    if online:
        existing_file(
            args.concept_ckpt,
            "concept checkpoint",
            "run stage 1 first (python main_concept.py) or pass --concept_ckpt.",
        )
        concept_sha = sha256_file(args.concept_ckpt)
    bank = load_bank(args.confidence_dir, train_set, args.input_size, concept_sha)
    # the stage-1 checkpoint is read once: whole for online targets, else only its metadata, and only when it
    # is the one the bank was made with
    checkpoint = None
    if online:
        checkpoint = load_concept_checkpoint(args.concept_ckpt)
    elif os.path.isfile(args.concept_ckpt) and sha256_file(args.concept_ckpt) == bank["concept_sha256"]:
        checkpoint = load_checkpoint(args.concept_ckpt, "concept checkpoint", mmap=True)
    best = (checkpoint.get("best") if checkpoint else None) or {}
    eval_acc = best.get("value") if best.get("metric") in ("eval_acc", "val_acc") else None  # its selection split
    teacher, warning = teacher_quality(bank, eval_acc, args.weak_teacher_acc)
    if warning:
        print(warning, flush=True)
    calibrate_kl_target(args, bank, teacher)
    mask = bank["mask"]
    if args.teacher_filter == "correct":
        correct = bank["logits"].argmax(1) == bank["labels"]
        mask, kept = filter_by_correctness(mask, correct, bank["labels"], len(train_set.classes))
        teacher["filtered_mask_share"] = float(mask.float().mean())
        if kept:
            print(
                f"note: --teacher_filter correct: the concept model classifies no high-confidence image of "
                f"{', '.join(train_set.classes[c] for c in kept)} correctly; those classes keep their "
                f"unfiltered pools.",
                flush=True,
            )
    if online:
        if checkpoint["meta"]["classes"] != train_set.classes:
            raise UserError(
                f"{args.concept_ckpt} was trained on classes {checkpoint['meta']['classes']}, "
                f"this run has {train_set.classes}."
            )
        concept = frozen_concept(checkpoint, args.device_obj)
        del checkpoint
        if args.channels_last:
            concept = concept.to(memory_format=torch.channels_last)
    pool_features = "online" if online and args.concept_target == "pool" else ("bank" if not online else None)
    wrapped = PerceptTrainSet(train_set, mask, args.k, pool_features, args.seed)
    features = None if online else {k: bank[k].to(args.device_obj) for k in ("features", "logits")}
    return wrapped, concept, features, bank["concept_sha256"], teacher
