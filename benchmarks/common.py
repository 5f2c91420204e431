"""What the learning-outcome benchmarks share: their list flags and the identity stand-ins."""

import contextlib
import os
import statistics
import subprocess
import sys
import time

from tools.pretrain_identity import DEFAULT_OUT, FILES, IDENTITY_ONLY_FILES
from utils.checkpoint import atomic_write_bytes, write_json
from utils.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def add_common_flags(parser) -> None:
    """--seeds, --pretrained_dir and --json, the same in every learning-outcome benchmark."""
    parser.add_argument(
        "--pretrained_dir",
        default=DEFAULT_OUT,
        help="tools/pretrain_identity.py --out (trained there first when missing)",
    )
    parser.add_argument("--json", default="", help="also write the results here")


def name_list(text: str, known, flag: str) -> list[str]:
    """A comma-separated list of names, each one of ``known``."""
    names = [v for v in text.split(",") if v]
    unknown = [v for v in names if v not in known]
    if unknown or not names:
        raise UserError(f"{flag} {text!r}: choose from {', '.join(known)}.")
    return names


def seed_list(text: str) -> list[int]:
    """A non-empty comma-separated list of integer seeds."""
    try:
        seeds = [int(s) for s in text.split(",") if s]
    except ValueError:
        raise UserError(f"--seeds {text!r} is not a comma-separated list of integers.") from None
    if not seeds:
        raise UserError("--seeds needs at least one seed.")
    return seeds


def identity_weights(
    pretrained_dir: str, log=None, expression_epochs: int = 0, expression_identity_batch: int = 0
) -> dict:
    """The identity stand-ins {"resnet50": .pkl, "resnet18": .pth}, trained by tools/pretrain_identity.py
    (or reused from its cache) first; its output goes to ``log`` (a file path) or to the terminal. With
    ``expression_epochs`` the ResNet-50 is then fine-tuned on the expressions of other people (the tool's
    ``--expression_epochs``: a teacher that knows more; ``expression_identity_batch`` identity images ride with
    each expression batch, the tool's ``--expression_identity_batch``) and the result also holds
    "resnet50_identity_only", the same network before that fine-tuning; the ResNet-18 stays identity-only."""
    script = [sys.executable, os.path.join(REPO, "tools", "pretrain_identity.py"), "--out", pretrained_dir]
    expression = ["--expression_epochs", str(expression_epochs)]
    if expression_identity_batch:
        expression += ["--expression_identity_batch", str(expression_identity_batch)]
    calls = (
        [script]
        if not expression_epochs
        else [[*script, "--arch", "resnet50", *expression], [*script, "--arch", "resnet18"]]
    )
    with open(log, "w") if log else contextlib.nullcontext() as handle:
        for cmd in calls:
            proc = subprocess.run(cmd, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT if log else None)
            if proc.returncode != 0:
                raise UserError("tools/pretrain_identity.py failed; run it alone to see why.")
    weights = {arch: os.path.join(pretrained_dir, name) for arch, name in FILES.items()}
    if expression_epochs:
        weights["resnet50_identity_only"] = os.path.join(pretrained_dir, IDENTITY_ONLY_FILES["resnet50"])
    return weights


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    values = list(values)
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def write_report(bench, name: str, report: dict, text: str, started: float) -> None:
    """``--out``/NAME.json (the settings, the report and the seconds taken; also ``--json`` when given) and
    ``--out``/NAME.md (the table ``text``)."""
    report = {"settings": dict(vars(bench)), **report, "seconds": time.perf_counter() - started}
    for path in filter(None, (os.path.join(bench.out, f"{name}.json"), bench.json)):
        write_json(path, report)
    atomic_write_bytes(os.path.join(bench.out, f"{name}.md"), (text + "\n").encode())
    print(f"wrote {bench.out}/{name}.{{json,md}} ({report['seconds']:.0f} s)")
