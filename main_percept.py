"""Stage 3: train the perceptual network (MS-Celeb ResNet-18) regularised by emotion concepts.

    python main_percept.py                                      # after stages 1 and 2
    OMP_NUM_THREADS=1 torchrun --nproc_per_node=4 main_percept.py
    python main_percept.py --eval --resume output/percept/checkpoint-best.pth
    python main_percept.py --vad --concept_target none --dataset fer2013 --data_path fer2013_vad.csv

Loss (shared/METHOD.md, stage 3): alpha*CE + beta*MMD(concepts, features) + gamma*KL(high-confidence),
plus, with --vad, lambda_vad*MSE(VAD) + lambda_cons*L_cons. Concept targets (--concept_target):
pool (default: own concept when high-confidence, mean of K pooled class concepts otherwise),
self (every sample its own concept, the released script), none (plain ResNet-18, CE only).
Only the perceptual network is saved.
"""
import os

import pandas as pd
import torch
import torch.nn.functional as F

from dataset_concept import build_splits, eval_loader, train_loader
from dataset_percept import PerceptTrainSet, collate_percept, load_bank, pooled_concepts
from models.concept import frozen_concept, load_concept_checkpoint
from models.percept import PerceptNet
from utils import distributed as du
from utils.checkpoint import atomic_write_bytes, sha256_file, write_csv
from utils.cli import common_parser, prepare_resume, start_run, write_config
from utils.engine import VAD_NAMES, Trainer, evaluate_checkpoint, fit, prepare_training
from utils.errors import UserError, run_main
from utils.losses import kl_high_confidence, mmd_loss, vad_consistency_loss, vad_mse, vad_sign_matrix

DEFAULT_PRETRAINED = os.path.join("pretrained", "resnet18_msceleb.pth")
DEFAULT_CONCEPT = os.path.join("output", "concept", "checkpoint-best.pth")
DEFAULT_CONFIDENCE = os.path.join("output", "confidence")


def get_args_parser():
    parser = common_parser("CRPN stage 3: the concept-regularised perceptual network",
                           os.path.join("output", "percept"), epochs=40)
    method = parser.add_argument_group("method (defaults: the paper)")
    method.add_argument("--pretrained", default=DEFAULT_PRETRAINED,
                        help="MS-Celeb ResNet-18 checkpoint, or 'none' to start from random weights")
    method.add_argument("--concept_ckpt", default=DEFAULT_CONCEPT, help="stage-1 checkpoint (frozen)")
    method.add_argument("--confidence_dir", default=DEFAULT_CONFIDENCE, help="stage-2 artefacts")
    method.add_argument("--concept_target", default="pool", choices=("pool", "self", "none"))
    method.add_argument("--pool_features", default="online", choices=("online", "bank"),
                        help="online: encode pooled images each step; bank: stage 2's features, no concept forward")
    method.add_argument("--k", type=int, default=8, help="pooled concepts averaged per low-confidence sample")
    method.add_argument("--alpha", type=float, default=None,
                        help="weight of CE: 2 (the paper's stage 3), or 1 with --vad (METHOD.md's multi-task loss)")
    method.add_argument("--beta", type=float, default=1.0, help="weight of MMD")
    method.add_argument("--gamma", type=float, default=1.0, help="weight of KL")
    vad = parser.add_argument_group("multi-task category + Valence/Arousal/Dominance")
    vad.add_argument("--vad", action="store_true", help="add the VAD head (needs --dataset fer2013 with VAD columns)")
    vad.add_argument("--lambda_vad", type=float, default=1.0, help="weight of the VAD MSE")
    vad.add_argument("--lambda_cons", type=float, default=0.1, help="weight of the category/VAD sign consistency")
    vad.add_argument("--cons_weights", default="prob", choices=("prob", "label"),
                     help="weight the sign penalty by predicted class probabilities or by the true label")
    vad.add_argument("--skip_missing_vad", action="store_true", help="drop rows with missing VAD instead of stopping")
    return parser


def check_method_args(args):
    if args.alpha is None:
        args.alpha = 1.0 if args.vad else 2.0
    if args.k < 1:
        raise UserError(f"--k must be at least 1, got {args.k}.")
    for name in ("alpha", "beta", "gamma", "lambda_vad", "lambda_cons"):
        if getattr(args, name) < 0:
            raise UserError(f"--{name} cannot be negative.")


def resolve_file(path, what, hint):
    if path.lower() == "none":
        return None
    if not os.path.isfile(path):
        raise UserError(f"{what} {path} not found; {hint}")
    return path


def make_loss_fn(args, concept, bank, sign_matrix):
    mode, use_bank = args.concept_target, args.pool_features == "bank"

    @torch.no_grad()
    def concept_targets(batch):
        """(targets c_i, concept logits) for the batch, METHOD.md stage 3."""
        mask = batch["mask"]
        if use_bank:
            own, logits_c = bank["features"][batch["index"]], bank["logits"][batch["index"]]
            pooled = bank["features"][batch["pool_index"]].mean(1)
        else:  # one forward of the batch and its pool images (eval-mode BatchNorm: rows are independent)
            images, b = batch["image"], batch["image"].shape[0]
            with_pool = mode == "pool" and "pool" in batch
            out = concept.emotion_forward(torch.cat([images, batch["pool"]]) if with_pool else images)
            e = out["e"].float()
            own, logits_c = e[:b], out["logits"][:b].float()
            pooled = pooled_concepts(e[b:], batch["pool_owner"], b) if with_pool else own
        target = own if mode == "self" else torch.where(mask[:, None], own, pooled)
        return target, logits_c

    def loss_fn(model, batch):
        out = model(batch["image"])
        logits = out["logits"].float()
        ce = F.cross_entropy(logits, batch["label"])
        loss = args.alpha * ce
        parts = {"ce": ce.detach()}
        if mode != "none":
            target, logits_c = concept_targets(batch)
            mmd = mmd_loss(target, out["p"].float())
            kl = kl_high_confidence(logits_c, logits, batch["mask"])
            loss = loss + args.beta * mmd + args.gamma * kl
            parts.update(mmd=mmd.detach(), kl=kl.detach())
        if sign_matrix is not None:
            vad = out["vad"].float()
            mse = vad_mse(vad, batch["vad"])
            weights = logits.softmax(1) if args.cons_weights == "prob" else \
                F.one_hot(batch["label"], logits.shape[1]).float()
            cons = vad_consistency_loss(vad, weights, sign_matrix)
            loss = loss + args.lambda_vad * mse + args.lambda_cons * cons
            parts.update(vad_mse=mse.detach(), vad_cons=cons.detach())
        return loss, parts, out

    return loss_fn


def predict(model, batch):
    return model(batch["image"])


def write_vad_records(output_dir, history, best):
    """The multi-task records, rewritten atomically after every epoch from the run's history:
    AccProcess_classify.csv, AccProcess_regress{V,A,D}.csv and summary.txt."""
    frame = pd.DataFrame(history)
    splits = {"train": "train", "public": "eval", "private": "test"}

    def column(split, key):
        name = f"{splits[split]}_{key}"
        return frame[name] if name in frame else float("nan")

    classify = pd.DataFrame({"epoch": frame["epoch"], **{f"{s}_acc": column(s, "acc") for s in splits}})
    write_csv(os.path.join(output_dir, "AccProcess_classify.csv"), classify)
    for letter, name in zip("VAD", VAD_NAMES):
        table = pd.DataFrame({"epoch": frame["epoch"], **{f"{s}_loss": column(s, f"{name}_mse") for s in splits},
                              **{f"{s}_ccc": column(s, f"{name}_ccc") for s in splits}})
        write_csv(os.path.join(output_dir, f"AccProcess_regress{letter}.csv"), table)
    chosen = next(r for r in history if r["epoch"] == best["epoch"])
    lines = [f"chosen epoch: {best['epoch']} (best PublicTest accuracy, the eval split)",
             f"category accuracy: train {chosen.get('train_acc', float('nan')):.2f} | public "
             f"{chosen.get('eval_acc', float('nan')):.2f} | private {chosen.get('test_acc', float('nan')):.2f}"]
    for split, prefix in (("public", "eval"), ("private", "test")):
        for name in VAD_NAMES:
            keys = [f"{prefix}_{name}_{m}" for m in ("mse", "mae", "pearson", "ccc")]
            if keys[0] in chosen:
                lines.append(f"{split} {name}: MSE {chosen[keys[0]]:.4f} MAE {chosen[keys[1]]:.4f} "
                             f"Pearson {chosen[keys[2]]:.4f} CCC {chosen[keys[3]]:.4f}")
    atomic_write_bytes(os.path.join(output_dir, "summary.txt"), ("\n".join(lines) + "\n").encode())


@run_main
def main(argv=None):
    args = start_run(get_args_parser().parse_args(argv))
    check_method_args(args)
    pretrained = resolve_file(args.pretrained, "pretrained weights", "put the MS-Celeb ResNet-18 there (see "
                              "pretrained/README.md) or pass --pretrained none.") if not args.eval else None
    splits, mean, std = build_splits(args, vad=args.vad)
    classes = splits["train"].classes
    mode = args.concept_target
    concept = bank = None
    concept_sha = None
    train_set = splits["train"]
    if mode != "none" and not args.eval:
        needs_concept = args.pool_features == "online"
        if needs_concept:
            resolve_file(args.concept_ckpt, "concept checkpoint", "run stage 1 first (python main_concept.py) "
                         "or pass --concept_ckpt.")
            concept_sha = sha256_file(args.concept_ckpt)
        bank = load_bank(args.confidence_dir, train_set, args.input_size, concept_sha)
        concept_sha = bank["concept_sha256"]
        if needs_concept:
            checkpoint = load_concept_checkpoint(args.concept_ckpt)
            if checkpoint["meta"]["classes"] != classes:
                raise UserError(f"{args.concept_ckpt} was trained on classes {checkpoint['meta']['classes']}, "
                                f"this run has {classes}.")
            concept = frozen_concept(checkpoint, args.device_obj)
            del checkpoint
            if args.channels_last:
                concept = concept.to(memory_format=torch.channels_last)
        pool_features = "bank" if args.pool_features == "bank" else ("online" if mode == "pool" else None)
        train_set = PerceptTrainSet(train_set, bank["mask"], args.k, pool_features, args.seed)
        bank = {k: bank[k].to(args.device_obj) for k in ("features", "logits")} if args.pool_features == "bank" else None
    sign_matrix = vad_sign_matrix(classes).to(args.device_obj) if args.vad else None

    model = PerceptNet(len(classes), pretrained, vad=args.vad)
    model, ddp_model, optimizer, scheduler, per_iteration, amp_dtype, scaler = prepare_training(args, model)
    meta = {"model": "PerceptNet+VAD" if args.vad else "PerceptNet", "vad": args.vad, "classes": classes,
            "input_size": args.input_size, "mean": mean, "std": std, "dataset": args.dataset,
            "train_fingerprint": splits["train"].fingerprint(), "concept_target": mode,
            "pool_features": args.pool_features, "concept_sha256": concept_sha,
            "pretrained_sha256": getattr(model, "weights_sha256", None)}
    prepare_resume(args, meta)  # before anything is written
    trainer = Trainer(args, model, ddp_model, make_loss_fn(args, concept, bank, sign_matrix), predict, optimizer,
                      scheduler, per_iteration, scaler, amp_dtype, meta,
                      on_epoch_end=(lambda history, best: write_vad_records(args.output_dir, history, best))
                      if args.vad else None)
    eval_loaders = {split: eval_loader(splits[split], args) for split in ("eval", "test") if split in splits}
    if args.eval:
        evaluate_checkpoint(trainer, args.resume, eval_loaders, classes)
        du.cleanup()
        return
    loader, sampler = train_loader(train_set, args, collate_percept)
    print(f"stage 3 ({mode}{'+' + args.pool_features if mode == 'pool' else ''}{', VAD' if args.vad else ''}) on "
          f"{args.device_name} x{args.world_size}: {len(train_set)} train images, classes {classes}, lr {args.lr:g}")
    write_config(args, {"pretrained": pretrained,
                        "concept_ckpt": args.concept_ckpt if concept is not None else None})
    fit(trainer, loader, sampler, eval_loaders, classes, args.epochs)
    du.cleanup()


if __name__ == "__main__":
    main()
