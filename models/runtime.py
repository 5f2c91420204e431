"""The deployed perceptual network behind one interface, as eager PyTorch or as ONNX Runtime.

``load_runner(path, device)`` reads a stage-3 checkpoint (``checkpoint-best.pth``) or a model written by
``tools/export.py`` (``.onnx``, fp32 or int8) and returns ``(runner, meta)``: ``runner(batch)`` takes a
normalised B x 3 x S x S float tensor and returns ``(probabilities, vad)`` as numpy arrays (B x C, and
B x 3 or None); ``meta`` holds the classes, input size and normalisation (``DEPLOY_KEYS``), which an
exported model carries in its ONNX ``metadata_props`` under ``METADATA_KEY``.
"""

import json
import os

import numpy as np
import torch

from models.percept import PerceptNet
from utils.checkpoint import load_checkpoint
from utils.errors import UserError, first_line

METADATA_KEY = "crpn"  # the ONNX metadata_props entry holding DEPLOY_KEYS as JSON
DEPLOY_KEYS = ("model", "backbone", "classifier_input", "vad", "classes", "input_size", "mean", "std")
ONNX_MAGIC_EXT = ".onnx"


def load_percept(path, device="cpu"):
    """(PerceptNet in eval mode on ``device``, meta) from a stage-3 checkpoint; anything else is a UserError."""
    checkpoint = load_checkpoint(path, "perceptual checkpoint")
    meta = checkpoint.get("meta") if isinstance(checkpoint, dict) else None
    if not meta or not str(meta.get("model", "")).startswith("PerceptNet"):
        raise UserError(
            f"{path} is not a stage-3 (main_percept.py) checkpoint; predict.py needs the perceptual "
            f"network, e.g. output/percept/checkpoint-best.pth."
        )
    model = PerceptNet(
        len(meta["classes"]),
        None,
        vad=meta.get("vad", False),
        backbone=meta.get("backbone", "resnet18"),
        classifier_input=meta.get("classifier_input", "unit"),
    )  # unit: checkpoints from before the flag
    model.load_state_dict(checkpoint["model"])
    return model.to(device).eval(), meta


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


class TorchRunner:
    """Eager PyTorch: the checkpoint's network on ``device``."""

    backend = "pytorch"

    def __init__(self, model, device):
        self.model, self.device = model, device

    @torch.no_grad()
    def __call__(self, batch: torch.Tensor):
        out = self.model(batch.to(self.device, non_blocking=True))
        vad = out["vad"].float().cpu().numpy() if "vad" in out else None
        return softmax(out["logits"].float().cpu().numpy()), vad


class OnnxRunner:
    """ONNX Runtime on CPU (or CUDA when onnxruntime-gpu is installed and ``device`` is CUDA)."""

    backend = "onnxruntime"

    def __init__(self, path, device="cpu", threads=0):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: a refused file gets our sentence, not ORT's warnings
        if threads:
            options.intra_op_num_threads = threads
        providers = ["CPUExecutionProvider"]
        if torch.device(device).type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(path, options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own (Fail, InvalidProtobuf, ...) for unreadable models
            first = first_line(exc)
            raise UserError(
                f"{path} is not a readable ONNX model ({first[:160]}); export one with tools/export.py."
            ) from None
        custom = self.session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in custom:
            raise UserError(
                f"{path} carries no CRPN metadata (classes, input size, normalisation); export it with tools/export.py."
            )
        self.meta = json.loads(custom[METADATA_KEY])
        self.input_name = self.session.get_inputs()[0].name
        self.outputs = [o.name for o in self.session.get_outputs()]

    def raw(self, batch) -> dict:
        """The model's named outputs (``logits`` and, with a VAD head, ``vad``) for a batch."""
        array = batch.numpy() if isinstance(batch, torch.Tensor) else np.asarray(batch)
        values = self.session.run(None, {self.input_name: np.ascontiguousarray(array, dtype=np.float32)})
        return dict(zip(self.outputs, values))

    def __call__(self, batch):
        out = self.raw(batch)
        return softmax(out["logits"]), out.get("vad")


def is_onnx(path) -> bool:
    return str(path).lower().endswith(ONNX_MAGIC_EXT)


def load_runner(path, device="cpu", threads=0):
    """(runner, meta) for a checkpoint or an exported ``.onnx`` model; a missing file is a UserError."""
    if not os.path.isfile(path):
        raise UserError(
            f"model file {path} not found; pass --model with a stage-3 checkpoint-best.pth or an .onnx "
            f"written by tools/export.py."
        )
    if is_onnx(path):
        runner = OnnxRunner(path, device, threads)
        return runner, runner.meta
    model, meta = load_percept(path, device)
    return TorchRunner(model, device), meta


def deploy_meta(meta: dict) -> dict:
    """The part of a checkpoint's metadata that inference needs (what an exported model carries)."""
    return {key: meta.get(key) for key in DEPLOY_KEYS}
