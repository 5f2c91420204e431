"""What each training stage optimises, as objects the stages, benchmarks and tests share.

An objective is called as ``objective(model, batch) -> (loss, parts, outputs)``: ``parts`` maps names
to detached scalars (logged as ``train_<name>``), ``outputs`` holds at least ``logits``. Its
``predict(model, batch)`` gives what evaluation scores (``logits``, and ``vad`` for the multi-task model).

- :class:`ConceptObjective` -- stage 1: alpha*L_orth + beta*(L_focal + L_RR) + gamma*L_CC.
- :class:`PerceptObjective` -- stage 3: alpha*CE + beta*MMD(concept targets, p) + gamma*KL(high-confidence),
  plus, for the multi-task model, lambda_vad*MSE(VAD) + lambda_cons*L_cons.
"""

import torch
import torch.nn.functional as F

from utils.errors import UserError
from utils.labels import CLASSES_7, RAFDB_FOCAL_ALPHA
from utils.losses import (
    class_weighted_supcon,
    focal_alpha_from_counts,
    focal_loss,
    kl_high_confidence,
    mmd_loss,
    orthogonality_loss,
    rank_regularization,
    vad_consistency_loss,
    vad_mse,
)


# --------------------------------------------------------------------------- stage 1
def resolve_focal_alpha(spec: str | None, classes: list, targets, dataset: str = "folder") -> list:
    """The per-class focal alphas as a list, in label order.

    ``spec``: 'rafdb' (the paper's, for the 7 canonical classes), 'auto' (from the class frequencies of
    ``targets``, :func:`utils.losses.focal_alpha_from_counts`), a comma-separated list, or None: the
    paper's for RAF-DB (``--dataset rafdb``, or class folders with the 7 canonical classes), 'auto' for
    every other dataset.
    """
    if spec is None:
        spec = "rafdb" if classes == CLASSES_7 and dataset in ("folder", "rafdb") else "auto"
    if spec == "rafdb":
        if classes != CLASSES_7:
            raise UserError(
                f"--focal_alpha rafdb needs the 7 classes {CLASSES_7}, this data has {classes}; "
                f"pass --focal_alpha auto or {len(classes)} comma-separated values."
            )
        return list(RAFDB_FOCAL_ALPHA)
    if spec == "auto":
        counts = torch.bincount(torch.tensor(targets), minlength=len(classes))
        return [float(a) for a in focal_alpha_from_counts(counts)]
    try:
        values = [float(v) for v in spec.split(",")]
    except ValueError:
        raise UserError(
            f"--focal_alpha {spec!r} is not 'rafdb', 'auto' or a comma-separated list of numbers."
        ) from None
    if len(values) != len(classes) or not all(0 < v <= 1 for v in values):
        raise UserError(
            f"--focal_alpha needs {len(classes)} values in (0, 1] (one per class, in the order "
            f"{classes}), got {spec!r}."
        )
    return values


class ConceptObjective:
    """Stage 1 (docs/method.md): alpha*L_orth(e, n) + beta*(L_focal + L_RR) + gamma*L_CC(e).

    Every term is computed in fp32 (also under autocast). ``args`` supplies the weights and settings:
    ``alpha beta gamma focal_gamma rr_ratio rr_margin temperature cc_mode``.
    """

    def __init__(self, args, num_classes: int, focal_alpha: list, device: torch.device):
        self.args = args
        self.num_classes = num_classes
        self.focal_alpha = torch.tensor(focal_alpha, dtype=torch.float32, device=device)

    def __call__(self, model, batch: dict):
        args = self.args
        out = model(batch["image"])
        labels = batch["label"]
        e = out["e"].float()
        l_orth = orthogonality_loss(e, out["n"].float())
        l_focal = focal_loss(out["logits"].float(), labels, self.focal_alpha, args.focal_gamma)
        l_rr = rank_regularization(out["confidence"].float(), args.rr_ratio, args.rr_margin)
        l_cc = class_weighted_supcon(e, labels, self.num_classes, args.temperature, args.temperature, mode=args.cc_mode)
        loss = args.alpha * l_orth + args.beta * (l_focal + l_rr) + args.gamma * l_cc
        parts = {
            "orth": l_orth.detach(),
            "focal": l_focal.detach(),
            "rr": l_rr.detach(),
            "cc": l_cc.detach(),
            "confidence": out["confidence"].detach().float().mean(),
        }
        return loss, parts, out

    @staticmethod
    def predict(model, batch: dict) -> dict:
        """The emotion branch alone (what stages 2 and 3 use): {"e", "logits", "confidence"}."""
        return model.emotion_forward(batch["image"])


# --------------------------------------------------------------------------- stage 3
def pooled_concepts(features: torch.Tensor, owner: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Mean feature per batch row of the rows' pool members (``owner[j]`` = the row of member j; rows
    without members get zeros)."""
    sums = torch.zeros(batch_size, features.shape[1], dtype=features.dtype, device=features.device)
    sums.index_add_(0, owner, features)
    counts = torch.bincount(owner, minlength=batch_size).clamp(min=1).to(features.dtype)
    return sums / counts[:, None]


class PerceptObjective:
    """Stage 3 (docs/method.md): alpha*CE + beta*MMD(c, p) + gamma*KL over high-confidence samples, and for
    the multi-task model lambda_vad*MSE(VAD) + lambda_cons*L_cons.

    ``args``: ``concept_target`` (pool | self | none), ``pool_features`` (online | bank), ``kl_temperature`` (a
    number: "auto" is resolved by dataset_percept.calibrate_kl_target), ``alpha beta gamma
    lambda_vad lambda_cons cons_weights``. ``concept`` is the frozen stage-1 model (online targets) or None;
    ``bank`` holds stage 2's ``features`` and ``logits`` on the device (bank targets) or None;
    ``sign_matrix`` (C x 3, :func:`utils.losses.vad_sign_matrix`) turns on the VAD terms.
    """

    def __init__(self, args, concept=None, bank: dict | None = None, sign_matrix: torch.Tensor | None = None):
        self.args = args
        self.mode = args.concept_target
        self.concept, self.bank, self.sign_matrix = concept, bank, sign_matrix

    @torch.no_grad()
    def concept_targets(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(targets c_i, concept logits) for the batch: the sample's own concept e_i when it is
        high-confidence (or always, for ``self``), else the mean concept of its K pool members."""
        mask = batch["mask"]
        if self.bank is not None:
            own, logits_c = self.bank["features"][batch["index"]], self.bank["logits"][batch["index"]]
            pooled = self.bank["features"][batch["pool_index"]].mean(1)
        else:  # one forward of the batch and its pool images (eval-mode BatchNorm: rows are independent)
            images, b = batch["image"], batch["image"].shape[0]
            with_pool = self.mode == "pool" and "pool" in batch
            out = self.concept.emotion_forward(torch.cat([images, batch["pool"]]) if with_pool else images)
            e = out["e"].float()
            own, logits_c = e[:b], out["logits"][:b].float()
            pooled = pooled_concepts(e[b:], batch["pool_owner"], b) if with_pool else own
        target = own if self.mode == "self" else torch.where(mask[:, None], own, pooled)
        return target, logits_c

    def __call__(self, model, batch: dict):
        args = self.args
        out = model(batch["image"])
        logits = out["logits"].float()
        ce = F.cross_entropy(logits, batch["label"])
        loss = args.alpha * ce
        parts = {"ce": ce.detach()}
        if self.mode != "none":
            target, logits_c = self.concept_targets(batch)
            mmd = mmd_loss(target, out["p"].float())
            if args.kl_temperature != 1:  # a number here: "auto" is resolved from the bank before training
                logits_c = logits_c / args.kl_temperature
            kl = kl_high_confidence(logits_c, logits, batch["mask"])
            loss = loss + args.beta * mmd + args.gamma * kl
            parts.update(mmd=mmd.detach(), kl=kl.detach())
        if self.sign_matrix is not None:
            vad = out["vad"].float()
            mse = vad_mse(vad, batch["vad"])
            weights = (
                logits.softmax(1) if args.cons_weights == "prob" else F.one_hot(batch["label"], logits.shape[1]).float()
            )
            cons = vad_consistency_loss(vad, weights, self.sign_matrix)
            loss = loss + args.lambda_vad * mse + args.lambda_cons * cons
            parts.update(vad_mse=mse.detach(), vad_cons=cons.detach())
        return loss, parts, out

    @staticmethod
    def predict(model, batch: dict) -> dict:
        return model(batch["image"])
