"""Export the perceptual network (and its VAD head, when it has one) to ONNX, optionally int8 as well.

    python tools/export.py --checkpoint output/percept/checkpoint-best.pth --out model.onnx
    python tools/export.py --checkpoint CKPT --out model.onnx --int8 static --calib data/RAF-DB/train

Writes ``OUT`` (fp32; input ``image`` B x 3 x S x S, normalised as in training; outputs ``logits`` and,
with a VAD head, ``vad``; any batch size) and ``OUT.json`` beside it. The model carries what inference
needs (model, backbone, classes, input size, mean, std, VAD) as JSON in its ``metadata_props`` under
``crpn``, so ``predict.py --model OUT`` needs nothing else. The exported model is checked against
PyTorch on random inputs and, with ``--calib``, on real images: the largest absolute difference of the
outputs must stay within ``--tolerance`` (1e-4), or nothing is written.

``--int8 static`` also writes ``OUT`` with ``.int8.onnx``: weights int8 per output channel, activations
uint8, with scales calibrated (min/max) on ``--calib_count`` images of ``--calib`` (spread evenly over
the sorted files), in ONNX Runtime's QDQ form. ``--int8 dynamic`` needs no images (weights int8,
activation scales computed per batch at run time) but ONNX Runtime runs its integer convolutions slowly
on CPU. Both go through ``onnxruntime.quantization``.
"""

import argparse
import io
import json
import os
import sys
import tempfile
import warnings

import numpy as np
import torch
from torch import nn

if __package__ in (None, ""):  # run as `python tools/export.py`: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dataset_concept import ImageFiles, build_transform  # noqa: E402
from models.runtime import METADATA_KEY, OnnxRunner, deploy_meta, load_percept  # noqa: E402
from utils.checkpoint import atomic_path, write_json  # noqa: E402
from utils.errors import UserError, run_main  # noqa: E402
from utils.files import sha256_file  # noqa: E402


class Outputs(nn.Module):
    """The network with a tuple of outputs, (logits[, vad]): what ONNX export traces."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, image):
        out = self.model(image)
        return (out["logits"], out["vad"]) if "vad" in out else out["logits"]


def get_args_parser():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--checkpoint", default=os.path.join("output", "percept", "checkpoint-best.pth"))
    parser.add_argument("--out", default="model.onnx", help="the fp32 model; OUT.json and OUT .int8.onnx beside it")
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--int8", choices=("none", "static", "dynamic"), default="none")
    parser.add_argument("--calib", default="", help="images (files or folders): calibration and the real-input check")
    parser.add_argument("--calib_count", type=int, default=128)
    parser.add_argument("--tolerance", type=float, default=1e-4, help="largest |ONNX - PyTorch| accepted")
    parser.add_argument("--seed", type=int, default=0, help="random inputs of the check")
    return parser


def int8_path(path: str) -> str:
    return (path[: -len(".onnx")] if path.lower().endswith(".onnx") else path) + ".int8.onnx"


def calibration_images(paths, count, meta) -> torch.Tensor:
    """``count`` images of ``paths`` spread evenly over the sorted list, transformed as at evaluation."""
    dataset = ImageFiles(paths, build_transform(False, meta["input_size"], meta["mean"], meta["std"]))
    picks = np.unique(np.linspace(0, len(dataset) - 1, min(count, len(dataset))).round().astype(int))
    return torch.stack([dataset[int(i)]["image"] for i in picks])


def with_metadata(proto, meta: dict):
    """``proto`` (an onnx ModelProto) with ``meta`` as JSON in metadata_props[METADATA_KEY] (replaced)."""
    kept = [p for p in proto.metadata_props if p.key != METADATA_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta)
    return proto


def save_onnx(proto, path):
    import onnx

    with atomic_path(path) as tmp:
        onnx.save(proto, tmp)


def export_fp32(model, meta, opset):
    """The ModelProto of the network with ``meta`` carried inside."""
    import onnx

    outputs = ["logits", "vad"] if meta.get("vad") else ["logits"]
    size = meta["input_size"]
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # deprecated, but it needs no onnxscript, unlike the default
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            Outputs(model).eval(),  # a fresh wrapper is in training mode, which export restores onto the model
            (torch.zeros(1, 3, size, size),),
            buffer,
            input_names=["image"],
            output_names=outputs,
            dynamic_axes={name: {0: "batch"} for name in ["image", *outputs]},
            opset_version=opset,
            dynamo=False,
        )
    proto = onnx.load_from_string(buffer.getvalue())
    proto.doc_string = "CRPN perceptual network (tools/export.py)"
    return with_metadata(proto, meta)


def max_difference(model, path, inputs) -> float:
    """The largest |ONNX Runtime - PyTorch| over every output for ``inputs``."""
    runner = OnnxRunner(path)
    with torch.no_grad():
        reference = model(inputs)
    got = runner.raw(inputs)
    return max(float(np.abs(got[name] - reference[name].numpy()).max()) for name in got)


def quantize(fp32_path, out_path, mode, calib, meta):
    """Write the int8 model of ``fp32_path`` to ``out_path`` (``mode`` static or dynamic), ``meta`` inside."""
    import onnx
    from onnxruntime import quantization as q

    with tempfile.TemporaryDirectory() as work:
        prepared = os.path.join(work, "prepared.onnx")
        q.quant_pre_process(fp32_path, prepared)
        quantized = os.path.join(work, "int8.onnx")
        if mode == "dynamic":
            q.quantize_dynamic(prepared, quantized, weight_type=q.QuantType.QInt8, per_channel=True)
        else:

            class Reader(q.CalibrationDataReader):
                def __init__(self):
                    self.batches = iter([{"image": calib[i : i + 16].numpy()} for i in range(0, len(calib), 16)])

                def get_next(self):
                    return next(self.batches, None)

            q.quantize_static(
                prepared,
                quantized,
                Reader(),
                quant_format=q.QuantFormat.QDQ,
                per_channel=True,
                weight_type=q.QuantType.QInt8,
                activation_type=q.QuantType.QUInt8,
                calibrate_method=q.CalibrationMethod.MinMax,
            )
        save_onnx(with_metadata(onnx.load(quantized), meta), out_path)


@run_main
def main(argv=None):
    args = get_args_parser().parse_args(argv)
    if args.calib_count < 1 or args.tolerance <= 0:
        raise UserError("--calib_count and --tolerance must be positive.")
    if args.int8 == "static" and not args.calib:
        raise UserError("--int8 static calibrates on images: pass --calib with training images (files or folders).")
    if not os.path.isfile(args.checkpoint):
        raise UserError(
            f"checkpoint {args.checkpoint} not found; pass --checkpoint with a stage-3 checkpoint-best.pth."
        )
    model, full_meta = load_percept(args.checkpoint, "cpu")
    meta = {**deploy_meta(full_meta), "checkpoint_sha256": sha256_file(args.checkpoint)}
    calib = calibration_images([args.calib], args.calib_count, meta) if args.calib else None
    generator = torch.Generator().manual_seed(args.seed)
    checks = {"random": torch.randn(8, 3, meta["input_size"], meta["input_size"], generator=generator)}
    if calib is not None:
        checks["real"] = calib[:32]

    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir) as work:
        staged = os.path.join(work, "model.onnx")
        save_onnx(export_fp32(model, meta, args.opset), staged)
        diffs = {name: max_difference(model, staged, inputs) for name, inputs in checks.items()}
        worst = max(diffs.values())
        if worst > args.tolerance:
            raise RuntimeError(f"the ONNX model differs from PyTorch by {worst:.3g} (> {args.tolerance:g}): {diffs}")
        report = {
            "checkpoint": os.path.abspath(args.checkpoint),
            "meta": meta,
            "opset": args.opset,
            "max_abs_diff_vs_pytorch": diffs,
            "fp32": {"path": os.path.basename(args.out), "bytes": os.path.getsize(staged)},
        }
        if args.int8 != "none":
            staged_int8 = os.path.join(work, "model.int8.onnx")
            quantize(staged, staged_int8, args.int8, calib, meta)
            report["int8"] = {
                "path": os.path.basename(int8_path(args.out)),
                "mode": args.int8,
                "calibration_images": 0 if calib is None or args.int8 == "dynamic" else len(calib),
                "bytes": os.path.getsize(staged_int8),
            }
            os.replace(staged_int8, int8_path(args.out))
        os.replace(staged, args.out)
    write_json(args.out + ".json", report)
    line = ", ".join(f"{k} inputs {v:.2g}" for k, v in diffs.items())
    print(f"{args.out}: {report['fp32']['bytes'] / 2**20:.1f} MiB, max |ONNX - PyTorch| {line}")
    if "int8" in report:
        print(f"{int8_path(args.out)}: {report['int8']['bytes'] / 2**20:.1f} MiB ({args.int8} int8)")


if __name__ == "__main__":
    main()
