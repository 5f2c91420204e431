"""The multi-task category + Valence/Arousal/Dominance model from the identity-pretrained ResNet-18 against the
same run from random weights, on the synthetic FER2013-VAD CSV.

    python benchmarks/vad.py                  # seeds 0,1, 20 epochs, 1,680 rows: about 25 minutes on 2 idle CPU cores
    python benchmarks/vad.py --seeds 0 --epochs 8 --train_per_class 120

Each run is ``main_percept.py --vad --concept_target none --dataset fer2013`` as a user runs it: PublicTest
chooses the epoch, PrivateTest is reported at that epoch. Prints category accuracy and CCC per dimension
(mean ± std over seeds) for both initialisations, and writes JSON and Markdown to ``--out``.
"""

import argparse
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from benchmarks.common import add_common_flags, identity_weights, mean_std, seed_list, write_report  # noqa: E402
from tools.make_synthetic_faces import make_dataset  # noqa: E402
from utils.errors import UserError, run_main  # noqa: E402
from utils.labels import VAD_NAMES  # noqa: E402
from utils.log import chosen_record  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument(
        "--epochs", type=int, default=20, help="8 epochs leave the encoder at about 35 %% category accuracy and CCC 0.2"
    )
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--input_size", type=int, default=40, help="the identity stand-ins' training size")
    parser.add_argument(
        "--train_per_class",
        type=int,
        default=240,
        help="FER2013 Training rows per class (120 leave either init at about 44 %% category accuracy, CCC 0.35-0.40)",
    )
    parser.add_argument("--test_per_class", type=int, default=40, help="PublicTest and PrivateTest rows per class")
    parser.add_argument("--num_workers", type=int, default=2)
    parser.add_argument("--out", default=os.path.join("output", "benchmarks", "vad"))
    add_common_flags(parser)
    args = parser.parse_args(argv)
    args.seeds = seed_list(args.seeds)
    return args


def chosen(output_dir):
    """The PublicTest-selected epoch's figures (PrivateTest reported there)."""
    best = chosen_record(os.path.join(output_dir, "log.jsonl"))[0]
    figures = {"epoch": best["epoch"], "public_acc": best["eval_acc"], "private_acc": best["test_acc"]}
    for name in VAD_NAMES:
        figures[f"public_{name}_ccc"] = best[f"eval_{name}_ccc"]
        figures[f"private_{name}_ccc"] = best[f"test_{name}_ccc"]
    figures["public_mean_ccc"] = statistics.mean(best[f"eval_{n}_ccc"] for n in VAD_NAMES)
    figures["private_mean_ccc"] = statistics.mean(best[f"test_{n}_ccc"] for n in VAD_NAMES)
    return figures


@run_main
def main(argv=None):
    bench = parse_args(argv)
    started = time.perf_counter()
    work = os.path.join(bench.out, "runs")
    os.makedirs(work, exist_ok=True)
    weights = identity_weights(bench.pretrained_dir, os.path.join(work, "pretrain.log"))
    faces = os.path.join(work, "faces")
    make_dataset(
        faces,
        seed=0,
        size=48,
        train_per_class=1,
        test_per_class=1,
        fer2013=True,
        fer_train_per_class=bench.train_per_class,
        fer_test_per_class=bench.test_per_class,
    )
    csv = os.path.join(faces, "fer2013", "fer2013_vad.csv")
    results = {}
    for init, pretrained in (("identity", weights["resnet18"]), ("scratch", "none")):
        for seed in bench.seeds:
            out = os.path.join(work, f"vad-{init}-seed{seed}")
            argv = [
                "--vad",
                "--concept_target",
                "none",
                "--dataset",
                "fer2013",
                "--data_path",
                csv,
                "--pretrained",
                pretrained,
                "--input_size",
                bench.input_size,
                "--epochs",
                bench.epochs,
                "--lr",
                bench.lr,
                "--lr_schedule",
                "cosine",
                "--batch_size",
                bench.batch_size,
                "--seed",
                seed,
                "--num_workers",
                bench.num_workers,
                "--norm_cache",
                os.path.join(work, "cache"),
                "--output_dir",
                out,
            ]
            with open(out + ".log", "w") as handle:
                proc = subprocess.run(
                    [sys.executable, os.path.join(REPO, "main_percept.py"), *map(str, argv)],
                    cwd=REPO,
                    stdout=handle,
                    stderr=subprocess.STDOUT,
                )
            if proc.returncode != 0:
                raise UserError(f"main_percept.py failed; see {out}.log.")
            results.setdefault(init, {})[seed] = chosen(out)
            print(f"{init} seed {seed}: {results[init][seed]}", flush=True)
    keys = ["public_acc", "private_acc", *[f"public_{n}_ccc" for n in VAD_NAMES], "public_mean_ccc", "private_mean_ccc"]
    lines = ["| init | seeds | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    summary = {}
    for init, runs in results.items():
        summary[init] = {k: mean_std([r[k] for r in runs.values()]) for k in keys}
        cells = [f"{m:.3f} ± {s:.3f}" if "ccc" in k else f"{m:.1f} ± {s:.1f}" for k, (m, s) in summary[init].items()]
        lines.append(f"| {init} | {len(runs)} | " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    print(text)
    write_report(bench, "vad", {"runs": results, "summary": summary}, text, started)


if __name__ == "__main__":
    main()
