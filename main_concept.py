"""Stage 1: train the conceptual pathway (emotion + non-emotion encoders, confidence classifier).

    python main_concept.py                                     # RAF-DB in data/RAF-DB, one GPU or CPU
    OMP_NUM_THREADS=1 torchrun --nproc_per_node=4 main_concept.py
    python main_concept.py --eval --resume output/concept/checkpoint-best.pth

Loss (shared/METHOD.md, stage 1): alpha*L_orth + beta*(L_focal + L_RR) + gamma*L_CC.
"""
import os

import torch

from dataset_concept import build_splits, eval_loader, train_loader
from models.concept import ConceptNet
from utils import distributed as du
from utils.cli import common_parser, prepare_resume, start_run, write_config
from utils.engine import Trainer, evaluate_checkpoint, fit, prepare_training
from utils.errors import UserError, run_main
from utils.labels import CLASSES_7, RAFDB_FOCAL_ALPHA
from utils.losses import (class_weighted_supcon, focal_alpha_from_counts, focal_loss, orthogonality_loss,
                          rank_regularization)

DEFAULT_PRETRAINED = os.path.join("pretrained", "resnet50_ft_weight.pkl")


def get_args_parser():
    parser = common_parser("CRPN stage 1: the conceptual pathway", os.path.join("output", "concept"), epochs=100)
    method = parser.add_argument_group("method (defaults: the paper)")
    method.add_argument("--pretrained", default=DEFAULT_PRETRAINED,
                        help="VGGFace2 ResNet-50 pickle for both encoders, or 'none' to start from random weights")
    method.add_argument("--alpha", type=float, default=0.1, help="weight of L_orth")
    method.add_argument("--beta", type=float, default=1.0, help="weight of L_focal + L_RR")
    method.add_argument("--gamma", type=float, default=0.01, help="weight of L_CC")
    method.add_argument("--focal_alpha", default=None,
                        help="per-class focal alphas: 'rafdb' (the paper's, for the 7 canonical classes), 'auto' "
                             "(from class frequencies) or a comma-separated list in label order; default rafdb for "
                             "RAF-DB (--dataset rafdb, or folder with the 7 canonical classes), auto otherwise")
    method.add_argument("--focal_gamma", type=float, default=2.0)
    method.add_argument("--rr_ratio", type=float, default=0.7, help="share of the batch in the high-confidence group")
    method.add_argument("--rr_margin", type=float, default=0.15)
    method.add_argument("--cc_mode", default="dims", choices=("dims", "standard"),
                        help="L_CC form: 'dims' (reference dimension views) or 'standard' (one 256-d view per sample)")
    method.add_argument("--temperature", type=float, default=0.07)
    method.add_argument("--nonemotion_bn_update", action="store_true",
                        help="reproduce the reference quirk: the frozen non-emotion backbone's BatchNorm statistics update")
    return parser


def resolve_focal_alpha(spec, classes, targets, dataset="folder"):
    """The per-class focal alphas as a list, in label order (default: the paper's for RAF-DB, whose
    default layout is class folders, and the frequency rule for every other dataset)."""
    if spec is None:
        spec = "rafdb" if classes == CLASSES_7 and dataset in ("folder", "rafdb") else "auto"
    if spec == "rafdb":
        if classes != CLASSES_7:
            raise UserError(f"--focal_alpha rafdb needs the 7 classes {CLASSES_7}, this data has {classes}; "
                            f"pass --focal_alpha auto or {len(classes)} comma-separated values.")
        return list(RAFDB_FOCAL_ALPHA)
    if spec == "auto":
        counts = torch.bincount(torch.tensor(targets), minlength=len(classes))
        return [float(a) for a in focal_alpha_from_counts(counts)]
    try:
        values = [float(v) for v in spec.split(",")]
    except ValueError:
        raise UserError(f"--focal_alpha {spec!r} is not 'rafdb', 'auto' or a comma-separated list of numbers.") from None
    if len(values) != len(classes) or not all(0 < v <= 1 for v in values):
        raise UserError(f"--focal_alpha needs {len(classes)} values in (0, 1] (one per class, in the order "
                        f"{classes}), got {spec!r}.")
    return values


def resolve_pretrained(path):
    """None for 'none'; else the file, which must exist."""
    if path.lower() == "none":
        return None
    if not os.path.isfile(path):
        raise UserError(f"pretrained weights {path} not found; put the VGGFace2 ResNet-50 file there "
                        f"(see pretrained/README.md) or pass --pretrained none to train from scratch.")
    return path


def make_loss_fn(args, num_classes, focal_alpha):
    alpha = torch.tensor(focal_alpha, dtype=torch.float32, device=args.device_obj)

    def loss_fn(model, batch):
        out = model(batch["image"])
        labels = batch["label"]
        l_orth = orthogonality_loss(out["e"].float(), out["n"].float())
        l_focal = focal_loss(out["logits"].float(), labels, alpha, args.focal_gamma)
        l_rr = rank_regularization(out["confidence"].float(), args.rr_ratio, args.rr_margin)
        l_cc = class_weighted_supcon(out["e"].float(), labels, num_classes, args.temperature, args.temperature,
                                     mode=args.cc_mode)
        loss = args.alpha * l_orth + args.beta * (l_focal + l_rr) + args.gamma * l_cc
        parts = {"orth": l_orth.detach(), "focal": l_focal.detach(), "rr": l_rr.detach(), "cc": l_cc.detach(),
                 "confidence": out["confidence"].detach().float().mean()}
        return loss, parts, out

    return loss_fn


def predict(model, batch):
    return model.emotion_forward(batch["image"])


@run_main
def main(argv=None):
    args = start_run(get_args_parser().parse_args(argv))
    pretrained = resolve_pretrained(args.pretrained) if not args.eval else None
    splits, mean, std = build_splits(args)
    classes = splits["train"].classes
    focal_alpha = resolve_focal_alpha(args.focal_alpha, classes, splits["train"].targets, args.dataset)

    model = ConceptNet(len(classes), pretrained, nonemotion_bn_update=args.nonemotion_bn_update)
    model, ddp_model, optimizer, scheduler, per_iteration, amp_dtype, scaler = prepare_training(args, model)
    meta = {"model": "ConceptNet", "classes": classes, "input_size": args.input_size, "mean": mean, "std": std,
            "dataset": args.dataset, "train_fingerprint": splits["train"].fingerprint(), "focal_alpha": focal_alpha,
            "pretrained_sha256": getattr(model, "weights_sha256", None)}
    prepare_resume(args, meta)  # before anything is written
    trainer = Trainer(args, model, ddp_model, make_loss_fn(args, len(classes), focal_alpha), predict, optimizer,
                      scheduler, per_iteration, scaler, amp_dtype, meta)
    eval_loaders = {split: eval_loader(splits[split], args) for split in ("eval", "test") if split in splits}
    if args.eval:
        evaluate_checkpoint(trainer, args.resume, eval_loaders, classes)
        du.cleanup()
        return
    loader, sampler = train_loader(splits["train"], args)
    print(f"stage 1 on {args.device_name} x{args.world_size}: {len(splits['train'])} train images, "
          f"{', '.join(f'{s} {len(d)}' for s, d in splits.items() if s != 'train')}, classes {classes}, "
          f"lr {args.lr:g}, focal alpha {focal_alpha}")
    write_config(args, {"pretrained": pretrained})
    fit(trainer, loader, sampler, eval_loaders, classes, args.epochs)
    du.cleanup()


if __name__ == "__main__":
    main()
