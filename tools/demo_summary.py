"""The table `make demo` ends with: accuracies, parameters and CPU latency of each pathway."""

import argparse
import os
import sys
import time

import torch

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from models.concept import ConceptNet  # noqa: E402
from models.percept import PerceptNet  # noqa: E402
from utils.log import chosen_record  # noqa: E402


def paper_order(concept: float, crpn: float, baseline: float) -> str:
    """Whether this run's test figures show the paper's order, concept > CRPN > baseline, in words."""
    shown = concept > crpn > baseline
    return (
        f"the paper's order on the test faces (concept > CRPN > baseline): {'shown' if shown else 'NOT shown'} "
        f"here ({concept:.2f} / {crpn:.2f} / {baseline:.2f} %; CRPN - baseline {crpn - baseline:+.2f} points)"
    )


@torch.no_grad()
def latency_ms(forward, input_size, repeats=20):
    """Median per-image latency at batch 1, one thread, after warm-up."""
    x = torch.randn(1, 3, input_size, input_size)
    for _ in range(3):
        forward(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        forward(x)
        times.append(time.perf_counter() - start)
    return 1000 * sorted(times)[len(times) // 2]


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", required=True)
    parser.add_argument("--input_size", type=int, required=True)
    parser.add_argument("--seconds", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    concept, percept = ConceptNet(7, None).eval(), PerceptNet(7, None).eval()
    # CRPN's student and the baseline are the same ResNet-18 network: counted and timed once
    percept_params, percept_ms = sum(p.numel() for p in percept.parameters()), latency_ms(percept, args.input_size)
    rows = [
        (
            "concept (stage 1, 2x ResNet-50)",
            chosen_record(os.path.join(args.output, "concept", "log.jsonl"))[0],
            sum(p.numel() for p in concept.parameters()),
            latency_ms(concept.emotion_forward, args.input_size),
        ),
        (
            "percept CRPN (stage 3, ResNet-18)",
            chosen_record(os.path.join(args.output, "percept", "log.jsonl"))[0],
            percept_params,
            percept_ms,
        ),
        (
            "percept baseline (ResNet-18, CE only)",
            chosen_record(os.path.join(args.output, "baseline", "log.jsonl"))[0],
            percept_params,
            percept_ms,
        ),
    ]
    print(
        f"\n{'model':40s} {'test acc %':>10s} {'mean cls %':>10s} {'val acc %':>9s} {'epoch':>5s} {'params M':>9s} "
        f"{'CPU ms/img':>10s}"
    )
    for name, best, params, ms in rows:
        print(
            f"{name:40s} {best['test_acc']:10.2f} {best['test_mean_class_acc']:10.2f} {best['eval_acc']:9.2f} "
            f"{best['epoch']:5d} {params / 1e6:9.2f} {ms:10.2f}"
        )
    print("\n" + paper_order(*(best["test_acc"] for _, best, _, _ in rows)))
    print(
        "(test figures at the epoch the validation faces chose; CPU latency: batch 1, one thread, "
        f"{args.input_size} px; the concept figure runs only its emotion branch.)\n"
        "(one training seed: on the demo's few training faces another seed moves each figure by several points; "
        "python benchmarks/ablation.py gives the mean and std over seeds, README 'Results'.)"
    )
    print(
        f"logs: {args.output}/{{concept,confidence,percept,baseline}} (tensorboard --logdir {args.output}); "
        f"predictions: {args.output}/predictions.csv, pictures in {args.output}/vis"
        + (f"; demo took {args.seconds} s" if args.seconds else "")
    )


if __name__ == "__main__":
    main()
