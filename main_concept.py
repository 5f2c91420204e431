"""Stage 1: train the conceptual pathway (emotion + non-emotion encoders, confidence classifier).

    python main_concept.py                                     # RAF-DB in data/RAF-DB, one GPU or CPU
    OMP_NUM_THREADS=1 torchrun --nproc_per_node=4 main_concept.py
    python main_concept.py --eval --resume output/concept/checkpoint-best.pth

Loss (docs/method.md, stage 1): alpha*L_orth + beta*(L_focal + L_RR) + gamma*L_CC (utils/objectives.py).
"""

from dataset_concept import build_splits, eval_loader, train_loader
from models.concept import ConceptNet
from utils import distributed as du
from utils.cli import concept_parser, existing_file, prepare_resume, start_run, write_config
from utils.engine import Trainer
from utils.errors import run_main
from utils.objectives import ConceptObjective, resolve_focal_alpha

get_args_parser = concept_parser  # the flags live in utils/cli.py, shared with benchmarks and tests


@run_main
def main(argv=None):
    args = start_run(get_args_parser().parse_args(argv))
    pretrained = (
        None
        if args.eval
        else existing_file(
            args.pretrained,
            "pretrained weights",
            "put the VGGFace2 ResNet-50 file there (see pretrained/README.md) "
            "or pass --pretrained none to train from scratch.",
        )
    )
    non_emotion = (
        None
        if args.eval or args.non_emotion_pretrained == "same"
        else existing_file(
            args.non_emotion_pretrained,
            "non-emotion encoder weights",
            "pass a ResNet-50 file of the --pretrained format, or --non_emotion_pretrained same.",
        )
    )
    splits, mean, std = build_splits(args)
    classes = splits["train"].classes
    focal_alpha = resolve_focal_alpha(args.focal_alpha, classes, splits["train"].targets, args.dataset)

    model = ConceptNet(
        len(classes),
        pretrained,
        nonemotion_bn_update=args.nonemotion_bn_update,
        classifier_input=args.classifier_input,
        non_emotion_pretrained=non_emotion,
    )
    meta = {
        "model": "ConceptNet",
        "classifier_input": args.classifier_input,
        "classes": classes,
        "input_size": args.input_size,
        "mean": mean,
        "std": std,
        "dataset": args.dataset,
        "train_fingerprint": splits["train"].fingerprint(),
        "val_split": args.val_record,  # the training images held out (--val_split): stages 2 and 3 re-derive them
        "focal_alpha": focal_alpha,
        "pretrained_sha256": model.weights_sha256,
        "non_emotion_pretrained_sha256": model.non_emotion_weights_sha256,
    }
    prepare_resume(args, meta)  # before anything is written
    trainer = Trainer(args, model, ConceptObjective(args, len(classes), focal_alpha, args.device_obj), meta)
    eval_loaders = {split: eval_loader(splits[split], args) for split in ("val", "eval", "test") if split in splits}
    if args.eval:
        trainer.evaluate_checkpoint(args.resume, eval_loaders, classes)
        du.cleanup()
        return
    loader, sampler = train_loader(splits["train"], args)
    print(
        f"stage 1 on {args.device_name} x{args.world_size}: {len(splits['train'])} train images, "
        f"{', '.join(f'{s} {len(d)}' for s, d in splits.items() if s != 'train')}, classes {classes}, "
        f"lr {args.lr:g}, focal alpha {focal_alpha}"
    )
    write_config(args, {"pretrained": pretrained, "non_emotion_pretrained": non_emotion})
    trainer.fit(loader, sampler, eval_loaders, classes, args.epochs)
    du.cleanup()


if __name__ == "__main__":
    main()
