"""Stage 3: train the perceptual network (MS-Celeb ResNet-18) regularised by emotion concepts.

    python main_percept.py                                      # after stages 1 and 2
    OMP_NUM_THREADS=1 torchrun --nproc_per_node=4 main_percept.py
    python main_percept.py --eval --resume output/percept/checkpoint-best.pth
    python main_percept.py --vad --concept_target none --dataset fer2013 --data_path fer2013_vad.csv

Loss (docs/method.md, stage 3; utils/objectives.py):
alpha*CE + beta*MMD(concepts, features) + gamma*KL(high-confidence), plus, with --vad,
lambda_vad*MSE(VAD) + lambda_cons*L_cons. Concept targets (--concept_target):
pool (default: own concept when high-confidence, mean of K pooled class concepts otherwise),
self (every sample its own concept, the released script), none (plain ResNet-18, CE only).
Only the perceptual network is saved.
"""

from dataset_concept import build_splits, eval_loader, train_loader
from dataset_percept import collate_percept, concept_regularisation
from models.backbones import PERCEPT_BACKBONES, default_weights
from models.percept import PerceptNet
from utils import distributed as du
from utils.cli import (
    adopt_concept_split,
    check_percept_args,
    existing_file,
    percept_parser,
    prepare_resume,
    start_run,
    write_config,
)
from utils.engine import Trainer
from utils.errors import UserError, run_main
from utils.log import write_vad_records
from utils.losses import vad_sign_matrix
from utils.objectives import PerceptObjective

get_args_parser = percept_parser  # the flags live in utils/cli.py, shared with benchmarks and tests


@run_main
def main(argv=None):
    args = start_run(get_args_parser().parse_args(argv))
    check_percept_args(args)
    if args.backbone not in PERCEPT_BACKBONES:
        raise UserError(f"--backbone {args.backbone} is not one of {', '.join(PERCEPT_BACKBONES)}.")
    if args.pretrained is None and not args.eval:
        args.pretrained = default_weights(args.backbone)
    pretrained = (
        None
        if args.eval
        else existing_file(
            args.pretrained,
            "pretrained weights",
            f"put the {args.backbone} weights there (see pretrained/README.md) or pass --pretrained none.",
        )
    )
    adopt_concept_split(args)  # the validation split of stage 1, before the data are split
    splits, mean, std = build_splits(args, vad=args.vad)
    classes = splits["train"].classes
    mode = args.concept_target
    concept = bank = concept_sha = teacher = None
    train_set = splits["train"]
    if mode != "none" and not args.eval:
        train_set, concept, bank, concept_sha, teacher = concept_regularisation(args, train_set)
    sign_matrix = vad_sign_matrix(classes).to(args.device_obj) if args.vad else None

    model = PerceptNet(
        len(classes), pretrained, vad=args.vad, backbone=args.backbone, classifier_input=args.classifier_input
    )
    meta = {
        "model": "PerceptNet+VAD" if args.vad else "PerceptNet",
        "backbone": args.backbone,
        "classifier_input": args.classifier_input,
        "vad": args.vad,
        "classes": classes,
        "input_size": args.input_size,
        "mean": mean,
        "std": std,
        "dataset": args.dataset,
        "train_fingerprint": splits["train"].fingerprint(),
        "val_split": args.val_record,  # the training images held out (--val_split): stages 2 and 3 re-derive them
        "concept_target": mode,
        "pool_features": args.pool_features,
        "teacher_filter": args.teacher_filter,
        "concept_sha256": concept_sha,
        "teacher": teacher,
        "pretrained_sha256": model.weights_sha256,
    }
    prepare_resume(args, meta)  # before anything is written
    trainer = Trainer(
        args,
        model,
        PerceptObjective(args, concept, bank, sign_matrix),
        meta,
        on_epoch_end=(lambda history, best: write_vad_records(args.output_dir, history, best)) if args.vad else None,
    )
    eval_loaders = {split: eval_loader(splits[split], args) for split in ("val", "eval", "test") if split in splits}
    if args.eval:
        trainer.evaluate_checkpoint(args.resume, eval_loaders, classes)
        du.cleanup()
        return
    loader, sampler = train_loader(train_set, args, collate_percept)
    print(
        f"stage 3 ({args.backbone}, {mode}{'+' + args.pool_features if mode == 'pool' else ''}"
        f"{', VAD' if args.vad else ''}) on "
        f"{args.device_name} x{args.world_size}: {len(train_set)} train images, classes {classes}, lr {args.lr:g}"
    )
    write_config(args, {"pretrained": pretrained, "concept_ckpt": args.concept_ckpt if concept is not None else None})
    trainer.fit(loader, sampler, eval_loaders, classes, args.epochs)
    du.cleanup()


if __name__ == "__main__":
    main()
