"""CRPN's gain, measured: the stages run as a user runs them, over seeds, on the identity-pretrained demo setting.

    python benchmarks/ablation.py                                  # 3 seeds, every variant (about 30 min on 2 cores)
    python benchmarks/ablation.py --seeds 0 --variants baseline,pool_bank
    python benchmarks/ablation.py --seeds 0,1,2,3,4 --jobs 5 --amp --num_workers 2   # one GPU, 5 seeds at once

Per seed s: stage 1 (``main_concept.py``, seed s) from the identity stand-ins of ``tools/pretrain_identity.py``,
stage 2 (``high_confidence.py``), then stage 3 (``main_percept.py``, seed s) once per variant:

- ``baseline``: ``--concept_target none`` (the same pretrained ResNet-18, cross-entropy only);
- ``self``: every sample regularised by its own concept (the published script);
- ``pool_online``: the paper's method (own concept if high-confidence, else K pooled concepts, encoded online);
- ``pool_bank``: the same targets from stage 2's feature bank;
- ``pool_bank_correct``: ``pool_bank`` with ``--teacher_filter correct`` (distil only where the concept model is right);
- ``pool_bank_mmd_only``, ``pool_bank_kl_only``: ``pool_bank`` with one regulariser switched off (``--gamma 0``,
  ``--beta 0``), ``pool_bank_kl4``: with the KL term weighted 4 instead of 1 (``--gamma 4``), and
  ``pool_bank_calibrated`` and ``pool_online_calibrated``: the KL target at the temperature that calibrates the
  teacher on its scored training faces (``--kl_temperature auto``), and ``pool_bank_calibrated_kl4``: that target
  weighted 4 (``--gamma 4``); not run by default.

``--teacher weak`` replaces stage 1 by a deliberately weak concept model (``--weak_epochs`` epochs from random
weights), to measure what a weak teacher does and what the remedy recovers. ``--teacher more_data`` trains stage 1
(from the identity stand-ins, ``--epochs_concept`` epochs) on the student's training faces plus
``--teacher_per_class`` more per class of another generator seed: a teacher that knows more than its student can
learn from its own faces, as the paper's VGGFace2 teacher does; stages 2 and 3 keep the student's faces.

Model selection is honest: the best epoch is chosen on a validation split (synthetic faces of another seed,
``--eval_data_path``), and the test split (``--test_data_path``) is reported at that epoch, never used to choose.
Prints a table (mean ± std over seeds of test accuracy and mean class accuracy, and each variant minus the
baseline), and writes JSON, Markdown and a plot to ``--out``.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from benchmarks.common import add_common_flags, identity_weights, mean_std, name_list, seed_list, write_report  # noqa: E402
from tools.convert_common import place_file  # noqa: E402
from tools.make_synthetic_faces import make_dataset  # noqa: E402
from utils.checkpoint import write_json  # noqa: E402
from utils.errors import UserError, run_main  # noqa: E402
from utils.figures import new_figure, save_figure  # noqa: E402
from utils.files import hold_folder  # noqa: E402
from utils.log import chosen_record  # noqa: E402

VARIANTS = {
    "baseline": ["--concept_target", "none"],
    "self": ["--concept_target", "self"],
    "pool_online": ["--concept_target", "pool", "--pool_features", "online"],
    "pool_bank": ["--concept_target", "pool", "--pool_features", "bank"],
    "pool_bank_correct": ["--concept_target", "pool", "--pool_features", "bank", "--teacher_filter", "correct"],
    "pool_bank_mmd_only": ["--concept_target", "pool", "--pool_features", "bank", "--gamma", "0"],
    "pool_bank_kl_only": ["--concept_target", "pool", "--pool_features", "bank", "--beta", "0"],
    "pool_bank_kl4": ["--concept_target", "pool", "--pool_features", "bank", "--gamma", "4"],
    "pool_bank_calibrated": ["--concept_target", "pool", "--pool_features", "bank", "--kl_temperature", "auto"],
    "pool_online_calibrated": ["--concept_target", "pool", "--pool_features", "online", "--kl_temperature", "auto"],
}
VARIANTS["pool_bank_calibrated_kl4"] = [*VARIANTS["pool_bank_calibrated"], "--gamma", "4"]
DEFAULT_VARIANTS = ["baseline", "self", "pool_online", "pool_bank", "pool_bank_correct"]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument(
        "--variants", default=",".join(DEFAULT_VARIANTS), help="comma-separated, from: " + ", ".join(VARIANTS)
    )
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (stage 1 and stage 3)")
    parser.add_argument(
        "--teacher",
        default="identity",
        choices=("identity", "weak", "more_data"),
        help="identity: stage 1 from the identity stand-ins; weak: a few epochs from random weights; more_data: "
        "from the stand-ins on the student's faces and --teacher_per_class more per class of another seed",
    )
    parser.add_argument("--weak_epochs", type=int, default=1, help="stage-1 epochs of the weak teacher")
    parser.add_argument(
        "--teacher_per_class", type=int, default=240, help="extra training faces per class of the more_data teacher"
    )
    parser.add_argument(
        "--epochs_concept", type=int, default=15, help="the paper trains stage 1 2.5x as long as stage 3"
    )
    parser.add_argument("--epochs_percept", type=int, default=6)
    parser.add_argument("--lr", type=float, default=1e-3, help="both stages (per-epoch cosine)")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument(
        "--expression_epochs",
        type=int,
        default=0,
        help="fine-tune the ResNet-50 stand-in on the expressions of other people (tools/pretrain_identity.py "
        "--expression_epochs; README: 8); 0: identity only",
    )
    parser.add_argument(
        "--expression_identity_batch",
        type=int,
        default=0,
        help="identity images carried with each expression batch of that fine-tuning, so the stand-in keeps its "
        "identity (tools/pretrain_identity.py --expression_identity_batch; README: 32); 0: expression alone",
    )
    parser.add_argument(
        "--non_emotion_identity_only",
        action="store_true",
        help="with --expression_epochs: the concept model's non-emotion encoder starts from the ResNet-50 stand-in "
        "as it was before that fine-tuning (main_concept.py --non_emotion_pretrained; as make demo)",
    )
    parser.add_argument("--input_size", type=int, default=40)
    parser.add_argument("--train_per_class", type=int, default=80)
    parser.add_argument(
        "--test_per_class",
        type=int,
        default=300,
        help="test and validation faces per class (300: one standard error about 1.0 point at 35 %%, and the seeds' "
        "spread of a paired difference about 1 point where 60 gave about 3, most of it from which faces were drawn; "
        "the demo's 30: 3.3 points, and epochs chosen by noise)",
    )
    parser.add_argument("--data_seed", type=int, default=0)
    parser.add_argument("--num_workers", type=int, default=0, help="loader workers (0: fastest on 2 cores)")
    parser.add_argument(
        "--jobs", type=int, default=1, help="seeds run at once (1 on a CPU; on one GPU, 3-5 keep it busy)"
    )
    parser.add_argument("--amp", action="store_true", help="mixed precision in every stage (CUDA only)")
    parser.add_argument("--out", default=os.path.join("output", "benchmarks", "ablation"))
    parser.add_argument(
        "--force",
        action="store_true",
        help="rerun every stage (by default a finished stage run with the same arguments is reused)",
    )
    parser.add_argument(
        "--keep_checkpoints",
        action="store_true",
        help="keep every run's checkpoints (by default only each teacher's checkpoint-best.pth, for stages 2 and 3)",
    )
    add_common_flags(parser)
    args = parser.parse_args(argv)
    args.variants = name_list(args.variants, VARIANTS, "--variants")
    args.seeds = seed_list(args.seeds)
    if args.jobs < 1:
        raise UserError(f"--jobs must be at least 1 (got {args.jobs}).")
    for name in ("expression_epochs", "expression_identity_batch"):
        if getattr(args, name) < 0:
            raise UserError(f"--{name} cannot be negative (got {getattr(args, name)}).")
    if args.non_emotion_identity_only and not args.expression_epochs:
        raise UserError("--non_emotion_identity_only needs --expression_epochs (without it there is one stand-in).")
    return args


def run(script, argv, log, output_dir, done_file, force=False, inputs=None):
    """Run a stage script as a user does; its output goes to ``log``; a failure stops the benchmark.

    A stage whose ``output_dir`` already holds ``done_file`` from a run with the same arguments and the same
    ``inputs`` (what its arguments name but do not say: the faces' settings, the record of the run that made the
    checkpoint it reads), recorded in ``ablation_argv.json`` there, is not run again, unless ``force``: a second
    call with other ``--variants`` or more ``--seeds`` reuses the teachers and runs it already has, and a teacher
    trained again makes its stage 2 and 3 runs run again. Returns the record, the ``inputs`` of what reads this run.
    """
    state = {"argv": [script, *map(str, argv)], "inputs": inputs}
    record = os.path.join(output_dir, "ablation_argv.json")
    if not force and os.path.exists(os.path.join(output_dir, done_file)) and os.path.exists(record):
        with open(record) as handle:
            if json.load(handle) == state:
                return state
    if os.path.exists(record):
        os.remove(record)
    with open(log, "w") as handle:
        proc = subprocess.run(
            [sys.executable, os.path.join(REPO, script), *state["argv"][1:]],
            cwd=REPO,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    if proc.returncode != 0:
        raise UserError(f"{script} failed (exit {proc.returncode}); see {log}.")
    write_json(record, state)
    return state


def drop_checkpoints(output_dir, names):
    """Delete a finished run's checkpoint files ``names`` (its logs and metrics stay): a 5-seed ablation would
    otherwise keep about 7 GB of weights and optimiser states."""
    for name in names:
        path = os.path.join(output_dir, name)
        if os.path.exists(path):
            os.remove(path)


def selected(output_dir):
    """Validation-selected figures of a run: test accuracy and mean class accuracy at the best-validation epoch."""
    best, log = chosen_record(os.path.join(output_dir, "log.jsonl"))
    return {
        "epoch": best["epoch"],
        "val_acc": best["eval_acc"],
        "test_acc": best["test_acc"],
        "test_mean_class_acc": best["test_mean_class_acc"],
        "final_test_acc": log[-1]["test_acc"],
    }


def summarise(results, variants):
    rows = []
    base = [r["test_acc"] for r in results.get("baseline", {}).values()]
    for name in variants:
        runs = list(results.get(name, {}).values())
        if not runs:
            continue
        row = {"variant": name, "seeds": len(runs)}
        for key in ("test_acc", "test_mean_class_acc", "final_test_acc"):
            values = [r[key] for r in runs]
            row[key], row[key + "_std"] = mean_std(values)
        if base and name != "baseline":  # paired by seed
            diffs = [
                results[name][s]["test_acc"] - results["baseline"][s]["test_acc"]
                for s in results[name]
                if s in results["baseline"]
            ]
            row["minus_baseline"], row["minus_baseline_std"] = mean_std(diffs)
        rows.append(row)
    return rows


def table(rows, concept_rows):
    lines = [
        "| variant | seeds | test acc % (val-selected) | mean class acc % | − baseline (paired) | test acc, last ep. |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        diff = f"{r['minus_baseline']:+.2f} ± {r['minus_baseline_std']:.2f}" if "minus_baseline" in r else ""
        lines.append(
            f"| {r['variant']} | {r['seeds']} | {r['test_acc']:.2f} ± {r['test_acc_std']:.2f} | "
            f"{r['test_mean_class_acc']:.2f} ± {r['test_mean_class_acc_std']:.2f} | {diff} | "
            f"{r['final_test_acc']:.2f} ± {r['final_test_acc_std']:.2f} |"
        )
    if concept_rows:
        accs = [c["test_acc"] for c in concept_rows]
        mean, std = mean_std(accs)
        lines.append(
            f"| (concept pathway, stage 1) | {len(accs)} | {mean:.2f} ± {std:.2f} | "
            f"{statistics.mean(c['test_mean_class_acc'] for c in concept_rows):.2f} | | |"
        )
    return "\n".join(lines)


def plot(rows, path):
    fig, axes = new_figure(1, 1, figsize=(1.3 * len(rows) + 2, 4))
    ax = axes[0, 0]
    ax.bar(
        range(len(rows)),
        [r["test_acc"] for r in rows],
        yerr=[r["test_acc_std"] for r in rows],
        capsize=4,
        color=["tab:grey" if r["variant"] == "baseline" else "tab:orange" for r in rows],
    )
    ax.set_xticks(range(len(rows)), [r["variant"] for r in rows], rotation=20)
    low = min(r["test_acc"] - r["test_acc_std"] for r in rows)
    ax.set_ylim(max(0, low - 5), min(100, max(r["test_acc"] + r["test_acc_std"] for r in rows) + 3))
    ax.set_ylabel("test accuracy (%), mean ± std over seeds")
    fig.tight_layout()
    save_figure(fig, path, dpi=100)


def teacher_training_set(work, faces, size, bench):
    """The more_data teacher's training folder: the student's training faces and ``--teacher_per_class`` more
    per class from another generator seed (other people), hard-linked (symlinked where links fail) side by side."""
    extra = os.path.join(work, "faces_extra")
    make_dataset(
        extra, seed=bench.data_seed + 2000, size=size, train_per_class=bench.teacher_per_class, test_per_class=1
    )
    union = os.path.join(work, "faces_teacher")
    shutil.rmtree(union, ignore_errors=True)
    for prefix, root in (("own", faces), ("extra", extra)):
        for name in sorted(os.listdir(os.path.join(root, "train"))):
            os.makedirs(os.path.join(union, name), exist_ok=True)
            for file in sorted(os.listdir(os.path.join(root, "train", name))):
                place_file(os.path.join(root, "train", name, file), os.path.join(union, name, f"{prefix}_{file}"), True)
    return union


def seed_runs(bench, ctx, seed):
    """One seed's stage 1, stage 2 and every variant's stage 3; returns (the teacher's figures, {variant: figures})."""
    results = {}
    tag = f"{bench.teacher}-seed{seed}"
    concept = os.path.join(ctx.work, f"concept-{tag}")
    teacher = (
        ["--pretrained", "none", "--epochs", bench.weak_epochs]
        if bench.teacher == "weak"
        else ["--pretrained", ctx.weights["resnet50"], "--epochs", bench.epochs_concept]
    )
    if bench.non_emotion_identity_only and bench.teacher != "weak":
        teacher += ["--non_emotion_pretrained", ctx.weights["resnet50_identity_only"]]
    teacher_run = run(
        "main_concept.py",
        [
            *ctx.data,
            *teacher,
            "--data_path",
            ctx.teacher_train,
            "--seed",
            seed,
            "--focal_alpha",
            "auto",
            "--output_dir",
            concept,
        ],
        concept + ".log",
        concept,
        "checkpoint-best.pth",
        bench.force,
        ctx.faces_made,
    )
    if not bench.keep_checkpoints:
        drop_checkpoints(concept, ["checkpoint-last.pth"])
    concept_row = selected(concept)
    confidence = os.path.join(ctx.work, f"confidence-{tag}")
    confidence_run = run(
        "high_confidence.py",
        [
            "--concept_ckpt",
            os.path.join(concept, "checkpoint-best.pth"),
            "--data_path",
            ctx.student_train,
            "--output_dir",
            confidence,
            "--num_workers",
            bench.num_workers,
            *ctx.amp,
        ],
        confidence + ".log",
        confidence,
        "bank.pt",
        bench.force,
        teacher_run,
    )
    for name in bench.variants:
        out = os.path.join(ctx.work, f"percept-{name}-{tag}")
        run(
            "main_percept.py",
            [
                *ctx.data,
                "--data_path",
                ctx.student_train,
                "--pretrained",
                ctx.weights["resnet18"],
                "--epochs",
                bench.epochs_percept,
                "--seed",
                seed,
                "--concept_ckpt",
                os.path.join(concept, "checkpoint-best.pth"),
                "--confidence_dir",
                confidence,
                "--output_dir",
                out,
                *VARIANTS[name],
            ],
            out + ".log",
            out,
            "log.jsonl",
            bench.force,
            confidence_run,
        )
        results[name] = selected(out)
        if not bench.keep_checkpoints:
            drop_checkpoints(out, ["checkpoint-last.pth", "checkpoint-best.pth"])
        print(
            f"seed {seed} {name}: test {results[name]['test_acc']:.2f} (epoch "
            f"{results[name]['epoch']}; concept {concept_row['test_acc']:.2f})",
            flush=True,
        )
    return concept_row, results


@run_main
def main(argv=None):
    bench = parse_args(argv)
    started = time.perf_counter()
    work = os.path.join(bench.out, "runs")
    hold_folder(work, "--out")  # a second ablation in the same folder would rebuild the faces under this one
    weights = identity_weights(
        bench.pretrained_dir,
        os.path.join(work, "pretrain.log"),
        bench.expression_epochs,
        bench.expression_identity_batch,
    )
    faces, val = os.path.join(work, "faces"), os.path.join(work, "faces_val")
    size = round(bench.input_size * 256 / 224) + 2
    make_dataset(
        faces,
        seed=bench.data_seed,
        size=size,
        train_per_class=bench.train_per_class,
        test_per_class=bench.test_per_class,
    )
    make_dataset(val, seed=bench.data_seed + 1000, size=size, train_per_class=1, test_per_class=bench.test_per_class)
    student_train = os.path.join(faces, "train")
    teacher_train = teacher_training_set(work, faces, size, bench) if bench.teacher == "more_data" else student_train
    amp = ["--amp"] if bench.amp else []  # every stage, scoring included
    data = [
        "--eval_data_path",
        os.path.join(val, "test"),
        "--test_data_path",
        os.path.join(faces, "test"),
        "--input_size",
        bench.input_size,
        "--batch_size",
        bench.batch_size,
        "--num_workers",
        bench.num_workers,
        "--norm_cache",
        os.path.join(work, "cache"),
        "--lr",
        bench.lr,
        "--lr_schedule",
        "cosine",
        *amp,
    ]
    # what the folder names do not say about the faces in them
    faces_made = {key: getattr(bench, key) for key in ("data_seed", "train_per_class", "test_per_class", "input_size")}
    if bench.teacher == "more_data":
        faces_made["teacher_per_class"] = bench.teacher_per_class
    if bench.expression_epochs:  # another ResNet-50 stand-in in the same file: every stage runs again
        faces_made["expression_epochs"] = bench.expression_epochs
        if bench.expression_identity_batch:
            faces_made["expression_identity_batch"] = bench.expression_identity_batch
    ctx = argparse.Namespace(
        work=work,
        weights=weights,
        data=data,
        amp=amp,
        teacher_train=teacher_train,
        student_train=student_train,
        faces_made=faces_made,
    )
    # seeds are independent: --jobs N runs N of them at once (on a GPU, where one small run leaves it mostly idle)
    with ThreadPoolExecutor(max_workers=bench.jobs) as pool:
        futures = [pool.submit(seed_runs, bench, ctx, seed) for seed in bench.seeds]
        try:
            outcomes = [future.result() for future in futures]
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    concept_rows = [row for row, _ in outcomes]
    results = {name: {seed: runs[name] for seed, (_, runs) in zip(bench.seeds, outcomes)} for name in bench.variants}
    rows = summarise(results, bench.variants)
    text = table(rows, concept_rows)
    print(text)
    plot(rows, os.path.join(bench.out, f"ablation-{bench.teacher}.png"))
    write_report(
        bench, f"ablation-{bench.teacher}", {"runs": results, "concept": concept_rows, "summary": rows}, text, started
    )


if __name__ == "__main__":
    main()
