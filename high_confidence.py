"""Stage 2: emotional-confidence scores, per-label thresholds, high-score pools and the feature bank.

    python high_confidence.py          # output/concept/checkpoint-best.pth -> output/confidence/

The frozen conceptual model (its emotion encoder and classifier only) scores every training image that
stage 1 trained on (the validation images it held out, ``--val_split``, are drawn again and left out);
``--amp`` and ``--channels_last`` apply to the scoring, training flags are refused.
For each label c the threshold t_c is the value at index floor(p * n_c) of the class's ascending
confidences (p = --percentile, 0.2); samples with confidence >= t_c are high-confidence and form
the class's high-score pool. Artefacts (all plain data, written atomically):

- scores_train.csv    path, label, class, confidence, pred for every training image
- thresholds.json     percentile, classes, thresholds, counts, pool_sizes (label order)
- pool.csv            the rows of scores_train.csv at or above their class threshold
- bank.pt             emotion features, concept logits, labels, mask for every image (scores order)
                      + classes, input size, normalisation, concept checkpoint sha256
- confidence_hist.png per-class confidence histograms with the threshold marked
"""

import torch

from dataset_concept import apply_recorded_split, build_dataset, build_transform, eval_loader
from models.concept import frozen_concept, load_concept_checkpoint
from utils import distributed as du
from utils.cli import confidence_parser, reject_training_flags, start_run, write_config
from utils.confidence import score, write_artefacts
from utils.engine import amp_setup, claim_output_dir
from utils.errors import UserError, run_main
from utils.files import sha256_file

get_args_parser = confidence_parser  # the flags live in utils/cli.py


@run_main
def main(argv=None):
    args = get_args_parser().parse_args(argv)
    reject_training_flags(args, "high_confidence.py (stage 2)")
    if not 0 <= args.percentile < 1:
        raise UserError(f"--percentile must be in [0, 1), got {args.percentile}.")
    checkpoint = load_concept_checkpoint(args.concept_ckpt)
    meta = checkpoint["meta"]
    saved_size = meta["input_size"]
    if args.input_size is None:
        args.input_size = saved_size
    elif args.input_size != saved_size:
        raise UserError(
            f"--input_size {args.input_size} differs from the concept checkpoint's {saved_size}; "
            f"drop the flag to use the checkpoint's."
        )
    start_run(args)
    classes = meta["classes"]
    model = frozen_concept(checkpoint, args.device_obj)
    del checkpoint
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    dataset = build_dataset(args.dataset, args.data_path, "train", skip_bad_images=args.skip_bad_images)
    if dataset.classes != classes:
        raise UserError(
            f"{args.data_path} has classes {dataset.classes} but the concept checkpoint was trained on "
            f"{classes}; score the training set the concept model was trained on."
        )
    # only the images stage 1 trained on: its held-out validation images are drawn again and left out
    dataset = apply_recorded_split(dataset, meta.get("val_split"), args.concept_ckpt)
    dataset.transform = build_transform(args.score_transform == "train", args.input_size, meta["mean"], meta["std"])
    amp_dtype = amp_setup(args.device_obj, args.amp)[0]
    scores = score(model, eval_loader(dataset, args), args.device_obj, amp_dtype, args.channels_last, args.print_freq)
    if scores["index"].numel() != len(dataset) and not args.skip_bad_images:
        raise UserError("scoring did not cover every training image.")

    if not du.is_main_process():
        du.cleanup()
        return
    claim_output_dir(args)
    summary = write_artefacts(
        args.output_dir,
        dataset,
        scores,
        args.percentile,
        {
            "input_size": args.input_size,
            "mean": meta["mean"],
            "std": meta["std"],
            "dataset": args.dataset,
            "concept_sha256": sha256_file(args.concept_ckpt),
            "score_transform": args.score_transform,
        },
    )
    write_config(args, {"concept_ckpt": args.concept_ckpt})
    print(
        f"scored {summary['images']} images; thresholds "
        + ", ".join(
            f"{c} {t:.3f} (pool {p}/{n})"
            for c, t, p, n in zip(classes, summary["thresholds"], summary["pool_sizes"], summary["counts"])
        )
        + f"; artefacts in {args.output_dir}"
    )
    du.cleanup()


if __name__ == "__main__":
    main()
