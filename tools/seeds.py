"""Repeat a stage, or the whole pipeline, over seeds; report the mean ± std of what each chosen epoch gives.

    python tools/seeds.py --seeds 0,1,2 --stages percept --common "--data_path D/train --eval_data_path D/test" \
        --percept "--concept_target none --pretrained none --epochs 6"
    python tools/seeds.py --seeds 0,1,2 --stages concept,confidence,percept --common "--val_split 0.1 ..." \
        --concept "--epochs 6" --percept "--epochs 6"

Seed s runs every stage of ``--stages`` as a user does (``python STAGE.py ... --seed s``, output in
OUT/seed_s/STAGE, its stdout in OUT/seed_s/STAGE.log); with the whole pipeline, stage 2 scores seed s's stage-1
model and stage 3 uses seed s's stage-1 checkpoint and stage-2 artefacts. ``--common`` goes to stages 1 and 3,
and to stage 2 as far as it applies there (data and run flags; training flags are left out).

From each training stage's metrics.json (its ``selection``): the epoch chosen on the validation split (or on
the eval split when there is none), and per reported split the accuracy at that epoch and, labelled
``*_best_epoch``, at the split's own best epoch. Writes OUT/seeds.csv (one row per seed and stage),
OUT/seeds_summary.csv (mean and sample std per stage) and OUT/seeds.md (``mean ± std``).
"""

import argparse
import json
import os
import shlex
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import pandas as pd

from benchmarks.ablation import run
from benchmarks.common import seed_list
from utils.checkpoint import atomic_write_bytes, write_csv
from utils.cli import TRAINING_ONLY
from utils.errors import UserError, run_main

STAGES = {"concept": "main_concept.py", "confidence": "high_confidence.py", "percept": "main_percept.py"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (--seed of every stage)")
    parser.add_argument("--stages", default="concept,confidence,percept", help="comma-separated, in pipeline order")
    parser.add_argument("--common", default="", help="flags for every stage (stage 2: those that apply to it)")
    for stage in STAGES:
        parser.add_argument(f"--{stage}", default="", help=f"further flags for {STAGES[stage]}")
    parser.add_argument("--out", default=os.path.join("output", "seeds"))
    args = parser.parse_args(argv)
    args.seeds = seed_list(args.seeds)
    args.stages = [s for s in args.stages.split(",") if s]
    unknown = [s for s in args.stages if s not in STAGES]
    if unknown or not args.stages:
        raise UserError(f"--stages {','.join(args.stages)!r}: choose from {', '.join(STAGES)}.")
    if args.stages != [s for s in STAGES if s in args.stages]:
        raise UserError(f"--stages must follow the pipeline order {','.join(STAGES)}.")
    return args


def scoring_flags(tokens: list[str]) -> list[str]:
    """The flags of ``tokens`` that stage 2 accepts: every ``--name [values]`` group but the training-only ones."""
    kept, keep = [], True
    for token in tokens:
        if token.startswith("--"):
            keep = token[2:].split("=", 1)[0] not in TRAINING_ONLY
        if keep:
            kept.append(token)
    return kept


def stage_argv(args, stage: str, seed: int, folder: str) -> list[str]:
    """The command-line flags of ``stage`` for ``seed`` (outputs under ``folder``)."""
    common = shlex.split(args.common)
    own = shlex.split(getattr(args, stage))
    argv = ["--seed", str(seed), "--output_dir", os.path.join(folder, stage)]
    concept = ["--concept_ckpt", os.path.join(folder, "concept", "checkpoint-best.pth")]
    if stage == "confidence":
        return scoring_flags(common) + argv + concept + own
    if stage == "percept":
        argv += concept if "concept" in args.stages else []
        argv += ["--confidence_dir", os.path.join(folder, "confidence")] if "confidence" in args.stages else []
    return common + argv + own


def selected_figures(output_dir: str) -> dict:
    """The chosen epoch's figures from a training stage's metrics.json (its ``selection`` block)."""
    path = os.path.join(output_dir, "metrics.json")
    try:
        with open(path) as handle:
            selection = json.load(handle)["selection"]
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"{path} holds no selection record ({exc}); did the stage finish?") from None
    row = {
        "selected_on": selection["selected_on"],
        "epoch": selection["epoch"],
        selection["metric"]: selection["value"],
    }
    for split, figures in selection["splits"].items():
        if split != selection["selected_on"]:
            row[f"{split}_acc"] = figures["acc_at_selected_epoch"]
            row[f"{split}_acc_best_epoch"] = figures["acc_at_best_epoch"]
    return row


def summarise(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample standard deviation over seeds of every figure, per stage (``<figure>_mean``, ``_std``)."""
    figures = [c for c in rows.columns if c.endswith(("_acc", "_acc_best_epoch"))]
    grouped = rows.groupby("stage", sort=False)[figures]
    table = grouped.mean().add_suffix("_mean").join(grouped.std(ddof=1).fillna(0.0).add_suffix("_std"))
    table.insert(0, "seeds", grouped.size())
    return table.reset_index()


def markdown(summary: pd.DataFrame) -> str:
    """The summary as a Markdown table of ``mean ± std`` cells."""
    figures = [c.removesuffix("_mean") for c in summary.columns if c.endswith("_mean")]
    lines = ["| stage | seeds | " + " | ".join(figures) + " |", "|---|---|" + "---|" * len(figures)]
    for _, r in summary.iterrows():
        cells = ["" if pd.isna(r[f"{f}_mean"]) else f"{r[f'{f}_mean']:.2f} ± {r[f'{f}_std']:.2f}" for f in figures]
        lines.append(f"| {r['stage']} | {r['seeds']} | " + " | ".join(cells) + " |")
    note = "*_best_epoch: the split's own best epoch, chosen on that split (what papers report; optimistic)."
    return "\n".join(lines) + "\n\n" + note + "\n"


@run_main
def main(argv=None):
    args = parse_args(argv)
    rows = []
    for seed in args.seeds:
        folder = os.path.join(args.out, f"seed_{seed}")
        os.makedirs(folder, exist_ok=True)
        for stage in args.stages:
            print(f"seed {seed}: {STAGES[stage]}", flush=True)
            run(STAGES[stage], stage_argv(args, stage, seed, folder), os.path.join(folder, f"{stage}.log"))
            if stage != "confidence":
                rows.append({"seed": seed, "stage": stage, **selected_figures(os.path.join(folder, stage))})
    if not rows:
        raise UserError("--stages holds no training stage (concept or percept) to report.")
    frame = pd.DataFrame(rows)
    summary = summarise(frame)
    write_csv(os.path.join(args.out, "seeds.csv"), frame)
    write_csv(os.path.join(args.out, "seeds_summary.csv"), summary)
    text = markdown(summary)
    atomic_write_bytes(os.path.join(args.out, "seeds.md"), text.encode())
    print(text + f"wrote {args.out}/seeds.csv, seeds_summary.csv, seeds.md", flush=True)


if __name__ == "__main__":
    main()
