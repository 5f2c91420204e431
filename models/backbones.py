"""Backbones by name (a registry), the face-identity backbones and their safe weight loaders.

``BACKBONES`` maps a name to a :class:`BackboneSpec` (constructor, weight loader, feature width, input
channel order, default weight file); :func:`build_backbone` builds one as a feature extractor and loads
its weights. The conceptual pathway uses ``vggface2_resnet50``; the perceptual network any of
``PERCEPT_BACKBONES`` (``--backbone``; ``resnet18`` by default, the paper's).

* ``vggface2_resnet50`` -- the VGGFace2 ResNet-50 (conceptual pathway). It is **ResNet v1**: the stride
  of a stage's first bottleneck sits on its 1x1 ``conv1`` and the stem max-pool is 3x3 / stride 2 /
  padding 0 / ``ceil_mode``. torchvision's resnet50 is v1.5 (stride on the 3x3 ``conv2``, max-pool
  padding 1); the VGGFace2 weights load into it without a single error and compute a different network,
  so the model here is torchvision's ResNet machinery re-wired to v1 with the very same parameter names.
* ``msceleb_resnet18`` -- torchvision's resnet18, for the MS-Celeb-1M checkpoint (perceptual pathway).

* ``resnet34``, ``resnet50``, ``mobilenet_v3_large``, ``efficientnet_b0`` -- torchvision's networks, for
  torchvision-layout checkpoints (a face-pretrained one of your own, or ``none``).

Weight files come from the internet, so no loader ever executes code from them:
``resnet50_ft_weight.pkl`` (a Python-2 pickle of numpy arrays) goes through a restricted unpickler that
admits only numpy arrays and plain containers; ``.pth`` checkpoints through
``torch.load(weights_only=True)``. Every problem with a file is a :class:`UserError` naming the file,
the key(s) and the fix. Both loaders return the file's sha256 so runs can log which weights they used.
"""

import _compat_pickle
import hashlib
import io
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torchvision import models as tv
from torchvision.models.resnet import Bottleneck, ResNet

from utils.checkpoint import damage, unpickler_reason
from utils.errors import UserError, first_line
from utils.files import sha256_file

try:  # numpy >= 2 keeps the implementation in numpy._core; numpy.core is a deprecated alias
    from numpy._core import multiarray as _np_multiarray
    from numpy._core import numeric as _np_numeric
except ImportError:  # numpy 1.x
    from numpy.core import multiarray as _np_multiarray
    from numpy.core import numeric as _np_numeric

VGGFACE2_CLASSES = 8631
README_HINT = "pretrained/README.md"

_IGNORED_SUFFIX = "num_batches_tracked"  # BN counters: absent from old checkpoints, never used in eval


# ----------------------------------------------------------------------------------------------------
# helpers


def _head_name(model: nn.Module) -> str:
    """The attribute holding a torchvision classifier's head: ``fc`` (ResNets) or ``classifier``."""
    return "fc" if hasattr(model, "fc") else "classifier"


def as_feature_extractor(model: nn.Module) -> int:
    """Replace the classification head (``fc`` or ``classifier``) by ``nn.Identity`` so ``model(x)``
    returns the globally pooled features; return their width (2048 for ResNet-50, 512 for ResNet-18,
    960 for MobileNetV3-Large, 1280 for EfficientNet-B0). The loaders accept a model with or without
    its head; without it, the file's head (of any class count) is ignored.
    """
    name = _head_name(model)
    head = getattr(model, name)
    if not isinstance(head, nn.Identity):
        first = head if isinstance(head, nn.Linear) else next(m for m in head.modules() if isinstance(m, nn.Linear))
        model.feature_width = first.in_features
        setattr(model, name, nn.Identity())
    return model.feature_width


def _key_list(keys, limit=8):
    keys = sorted(keys)
    text = ", ".join(keys[:limit])
    if len(keys) > limit:
        text += f" (and {len(keys) - limit} more)"
    return text


def _check_against_model(model, tensors, path, what, skip_prefixes=()):
    """Validate ``tensors`` (name -> tensor) against ``model.state_dict()`` and load them.

    Keys under ``skip_prefixes`` are ignored on both sides; ``fc.*`` keys of the file are ignored when the
    model has no such keys (its fc was replaced by nn.Identity). Everything else must match exactly, except
    the BN ``num_batches_tracked`` counters, which may be absent from the file.
    """

    def skipped(key):
        return any(key.startswith(prefix) for prefix in skip_prefixes)

    own = {k: v for k, v in model.state_dict().items() if not skipped(k)}
    given = {k: v for k, v in tensors.items() if not skipped(k)}
    if not any(k.startswith("fc.") for k in own):
        given = {k: v for k, v in given.items() if not k.startswith("fc.")}

    missing = [k for k in own if k not in given and not k.endswith(_IGNORED_SUFFIX)]
    if missing:
        raise UserError(
            f"{what} {path} lacks the parameter(s) {_key_list(missing)}; it is not the expected "
            f"file, get the right one as described in {README_HINT}."
        )
    unexpected = [k for k in given if k not in own]
    if unexpected:
        raise UserError(
            f"{what} {path} holds parameter(s) this network does not have: "
            f"{_key_list(unexpected)}; it is not the expected file, get the right one as described "
            f"in {README_HINT}."
        )
    wrong = [
        f"{k} {tuple(v.shape)} (expected {tuple(own[k].shape)})"
        for k, v in given.items()
        if tuple(v.shape) != tuple(own[k].shape)
    ]
    if wrong:
        raise UserError(
            f"{what} {path} has mis-shaped parameter(s) {_key_list(wrong)}; it is not the expected "
            f"file, get the right one as described in {README_HINT}."
        )
    result = model.load_state_dict(given, strict=False)
    leftover = [k for k in result.missing_keys if not skipped(k) and not k.endswith(_IGNORED_SUFFIX)]
    assert not leftover and not result.unexpected_keys, (leftover, result.unexpected_keys)


# ----------------------------------------------------------------------------------------------------
# VGGFace2 ResNet-50 (v1)


def vggface2_resnet50(num_classes: int = VGGFACE2_CLASSES) -> nn.Module:
    """The VGGFace2 ResNet-50: torchvision's ResNet + Bottleneck re-wired to ResNet v1.

    Parameter names are those of ``torchvision.models.resnet50``. Differences from torchvision (v1.5):
    in the first bottleneck of every stage the stride sits on ``conv1`` (1x1) and ``conv2`` (3x3) has
    stride 1; the stem max-pool has padding 0 and ``ceil_mode=True``. Global pooling is adaptive, so any
    input size works (the features at 224 px are those of the original network).
    """
    model = ResNet(Bottleneck, [3, 4, 6, 3], num_classes=num_classes)
    model.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=0, ceil_mode=True)
    for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
        first = stage[0]
        stride = first.conv2.stride
        first.conv1.stride = stride
        first.conv2.stride = (1, 1)
    return model


def _latin1_bytes(text, encoding):
    """Stand-in for ``_codecs.encode`` in pickles: how Python 3 writes ``bytes`` at protocol <= 2."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


_SAFE_GLOBALS = {
    ("collections", "OrderedDict"): __import__("collections").OrderedDict,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_bytes,
}
for _module in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _SAFE_GLOBALS[(_module, "_reconstruct")] = _np_multiarray._reconstruct
    _SAFE_GLOBALS[(_module, "scalar")] = _np_multiarray.scalar
    _SAFE_GLOBALS[(_module, "ndarray")] = np.ndarray
    _SAFE_GLOBALS[(_module, "dtype")] = np.dtype
for _module in ("numpy.core.numeric", "numpy._core.numeric"):  # protocol-5 pickles of arrays
    _SAFE_GLOBALS[(_module, "_frombuffer")] = _np_numeric._frombuffer
del _module


class _RefusedGlobal(pickle.UnpicklingError):
    def __init__(self, module, name):
        super().__init__(f"{module}.{name}")
        self.qualname = f"{module}.{name}"


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays, scalars and plain containers, and nothing that could run code."""

    def find_class(self, module, name):
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            # report Python-2 names as today's (``__builtin__.exec`` is ``builtins.exec``)
            module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
            module = _compat_pickle.IMPORT_MAPPING.get(module, module)
            raise _RefusedGlobal(module, name) from None


def _read_numpy_pickle(path, what):
    """(object, sha256) of a pickle of numpy arrays, through the restricted unpickler."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(
            f"{what} {path} not found; download it as described in {README_HINT} "
            f"(or pass --pretrained none to train from scratch)."
        )
    with open(path, "rb") as handle:
        data = handle.read()
    sha256 = hashlib.sha256(data).hexdigest()
    try:
        obj = _NumpyOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()
    except _RefusedGlobal as exc:
        raise UserError(
            f"The safe loader refuses to load {path}: it asks to run {exc.qualname}, which a pickle "
            f"of numpy arrays never needs, so it may be malicious; use the genuine file described in "
            f"{README_HINT}."
        ) from None
    except Exception as exc:  # noqa: BLE001 -- any decoding failure means a corrupt or foreign file
        raise UserError(
            f"{what} {path} is not a readable pickle of numpy arrays ({type(exc).__name__}: {exc}); "
            f"download it again as described in {README_HINT}."
        ) from None
    return obj, sha256


def load_vggface2_weights(model: nn.Module, path: str) -> str:
    """Load ``resnet50_ft_weight.pkl`` (name -> numpy array, Python-2 pickle) into ``model``; return its sha256.

    The pickle is read by a restricted unpickler that admits only numpy arrays and plain containers, so
    a malicious file is refused before anything in it runs. Missing or mis-shaped parameters (BN
    ``num_batches_tracked`` counters excepted) and unknown ones are a :class:`UserError` naming them.
    ``fc.*`` is loaded when the model still has its 8631-way fc and ignored after ``as_feature_extractor``.
    """
    what = "VGGFace2 weight file"
    obj, sha256 = _read_numpy_pickle(path, what)
    if not isinstance(obj, dict):
        raise UserError(
            f"{what} {path} holds a {type(obj).__name__}, not a dict of parameter arrays; "
            f"get resnet50_ft_weight.pkl as described in {README_HINT}."
        )
    tensors = {}
    for key, value in obj.items():
        if not isinstance(value, (np.ndarray, np.generic)) or not (
            np.issubdtype(value.dtype, np.number) or value.dtype == np.bool_
        ):
            raise UserError(
                f"{what} {path}: entry {key!r} is a {type(value).__name__}, not a numeric array; "
                f"get resnet50_ft_weight.pkl as described in {README_HINT}."
            )
        tensors[str(key)] = torch.from_numpy(np.ascontiguousarray(value))
    _check_against_model(model, tensors, path, what)
    return sha256


# ----------------------------------------------------------------------------------------------------
# torchvision-layout checkpoints (the MS-Celeb ResNet-18 and the other perceptual backbones)


def msceleb_resnet18() -> nn.Module:
    """torchvision's resnet18 (random init, 1000-way fc) for the MS-Celeb-1M checkpoint."""
    return tv.resnet18(weights=None)


def load_torchvision_weights(model: nn.Module, path: str, what: str = "backbone checkpoint") -> str:
    """Load a torchvision-layout checkpoint into ``model`` (its classification head excluded); return the
    file's sha256.

    Format: ``torch.save({'state_dict': {...torchvision names...}, ...})`` (a bare state dict is accepted
    too), keys possibly prefixed by ``module.``, a head (``fc`` or ``classifier``) of any class count.
    Read with ``torch.load(weights_only=True)``; the head is dropped and everything else must match exactly.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"{what} {path} not found; download it as described in {README_HINT}.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        broken = damage(path)  # a damaged file is corrupt, not unsafe
        if broken:
            raise UserError(
                f"{what} {path} is corrupt or truncated ({broken}); download it again as described in {README_HINT}."
            ) from None
        raise UserError(
            f"{what} {path} is not a plain tensor checkpoint and is refused for safety ({unpickler_reason(exc)}); "
            f"use the genuine file described in {README_HINT}."
        ) from None
    except Exception as exc:  # noqa: BLE001 -- truncated zip, wrong format, ...
        first = first_line(exc, default="")
        raise UserError(
            f"{what} {path} is not a readable PyTorch checkpoint ({type(exc).__name__}: {first}); "
            f"download it again as described in {README_HINT}."
        ) from None
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not state:
        raise UserError(
            f"{what} {path} has no 'state_dict' of parameters; use the genuine file described in {README_HINT}."
        )
    head = _head_name(model) + "."
    tensors = {}
    for key, value in state.items():
        key = str(key)
        if key.startswith("module."):
            key = key[len("module.") :]
        if key.startswith(head):
            continue
        if not isinstance(value, torch.Tensor):
            raise UserError(
                f"{what} {path}: entry {key!r} is a {type(value).__name__}, not a tensor; use the "
                f"genuine file described in {README_HINT}."
            )
        tensors[key] = value
    _check_against_model(model, tensors, path, what, skip_prefixes=(head,))
    return sha256_file(path)


def load_msceleb_weights(model: nn.Module, path: str) -> str:
    """Load the MS-Celeb-1M ResNet-18 checkpoint (see :func:`load_torchvision_weights`); return its sha256."""
    return load_torchvision_weights(model, path, "MS-Celeb ResNet-18 checkpoint")


# ----------------------------------------------------------------------------------------------------
# the registry


@dataclass(frozen=True)
class BackboneSpec:
    """How to build and load one backbone: ``build()`` gives the torchvision-style classifier,
    ``load(model, path) -> sha256`` reads a weight file into it, ``width`` is the pooled feature width,
    ``bgr`` whether it expects BGR input, ``weights`` its default file in ``pretrained/`` (None: no
    default; pass ``--pretrained PATH`` or ``none``)."""

    build: Callable[[], nn.Module]
    load: Callable[[nn.Module, str], str]
    width: int
    bgr: bool = False
    weights: str | None = None
    description: str = ""


BACKBONES: dict[str, BackboneSpec] = {
    "vggface2_resnet50": BackboneSpec(
        vggface2_resnet50,
        load_vggface2_weights,
        2048,
        bgr=True,
        weights="resnet50_ft_weight.pkl",
        description="VGGFace2 ResNet-50 (v1), the conceptual pathway's encoders",
    ),
    "resnet18": BackboneSpec(
        msceleb_resnet18,
        load_msceleb_weights,
        512,
        weights="resnet18_msceleb.pth",
        description="MS-Celeb-1M ResNet-18, the paper's perceptual network",
    ),
    "resnet34": BackboneSpec(
        lambda: tv.resnet34(weights=None), load_torchvision_weights, 512, description="torchvision ResNet-34"
    ),
    "resnet50": BackboneSpec(
        lambda: tv.resnet50(weights=None), load_torchvision_weights, 2048, description="torchvision ResNet-50 (v1.5)"
    ),
    "mobilenet_v3_large": BackboneSpec(
        lambda: tv.mobilenet_v3_large(weights=None),
        load_torchvision_weights,
        960,
        description="torchvision MobileNetV3-Large",
    ),
    "efficientnet_b0": BackboneSpec(
        lambda: tv.efficientnet_b0(weights=None),
        load_torchvision_weights,
        1280,
        description="torchvision EfficientNet-B0",
    ),
}
PERCEPT_BACKBONES = tuple(name for name in BACKBONES if name != "vggface2_resnet50")


def backbone_spec(name: str) -> BackboneSpec:
    """The registry entry of ``name``; an unknown name is a UserError listing the known ones."""
    if name not in BACKBONES:
        raise UserError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}.")
    return BACKBONES[name]


def build_backbone(name: str, pretrained: str | None = None) -> tuple[nn.Module, str | None]:
    """The backbone ``name`` as a feature extractor (head replaced by ``nn.Identity``), with the weights
    of ``pretrained`` (a file, or None for random init). Returns (module, sha256 of the file or None).
    A weight file's own head, of whatever class count (8631 VGGFace2 identities, ...), is ignored."""
    spec = backbone_spec(name)
    model = spec.build()
    width = as_feature_extractor(model)
    assert width == spec.width, (name, width, spec.width)
    sha256 = spec.load(model, pretrained) if pretrained is not None else None
    return model, sha256


def default_weights(name: str) -> str:
    """The default weight file of backbone ``name`` (``pretrained/<file>``); a backbone without one is a
    UserError asking for ``--pretrained PATH`` or ``--pretrained none``."""
    spec = backbone_spec(name)
    if spec.weights is None:
        raise UserError(
            f"--backbone {name} has no default weight file; pass --pretrained PATH (a torchvision-layout "
            f"state dict) or --pretrained none to train from scratch."
        )
    return os.path.join("pretrained", spec.weights)
