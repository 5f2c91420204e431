"""Backbones, safe weight loaders, ConceptNet and PerceptNet (small inputs, CPU, a few seconds each)."""

import builtins
import collections
import hashlib
import os
import pickle
import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from models.backbones import (
    BACKBONES,
    PERCEPT_BACKBONES,
    as_feature_extractor,
    build_backbone,
    default_weights,
    load_msceleb_weights,
    load_vggface2_weights,
    msceleb_resnet18,
    vggface2_resnet50,
)
from models.concept import ConceptNet, ConfidenceClassifier, Encoder
from models.percept import PerceptNet
from utils.errors import UserError
from utils.files import sha256_file

# ----------------------------------------------------------------------------------------------------
# fake weight files in the real formats


class _Python2Pickler(pickle._Pickler):
    """Writes ``bytes`` as Python 2 ``str`` (BINSTRING), as the original resnet50_ft_weight.pkl does."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj):
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str


def _python2_style_pickle(arrays):
    """Protocol 2, byte-string keys and data, numpy 1.x module names: what Python 2 + numpy wrote."""
    import io

    buffer = io.BytesIO()
    _Python2Pickler(buffer, protocol=2).dump({k.encode(): v for k, v in arrays.items()})
    return buffer.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")


def _randomised_state(model, seed):
    """A state dict (name -> numpy) with random weights and plausible, non-trivial BatchNorm statistics."""
    generator = torch.Generator().manual_seed(seed)
    arrays = {}
    for name, value in model.state_dict().items():
        if name.endswith("num_batches_tracked"):
            continue  # the real files have no such entries
        if name.endswith("running_var"):
            value = 0.5 + torch.rand(value.shape, generator=generator)
        elif name.endswith("running_mean") or name.endswith(".bias"):
            value = 0.1 * torch.randn(value.shape, generator=generator)
        elif value.dim() == 1:  # BN weight
            value = 0.5 + 0.5 * torch.rand(value.shape, generator=generator)
        else:
            value = value + 0.01 * torch.randn(value.shape, generator=generator)
        arrays[name] = value.numpy().astype(np.float32)
    return arrays


@pytest.fixture(scope="module")
def vggface2_arrays():
    torch.manual_seed(0)
    return _randomised_state(torchvision.models.resnet50(weights=None, num_classes=8631), seed=1)


@pytest.fixture(scope="module")
def vggface2_pkl(tmp_path_factory, vggface2_arrays):
    path = tmp_path_factory.mktemp("weights") / "resnet50_ft_weight.pkl"
    path.write_bytes(_python2_style_pickle(vggface2_arrays))
    return path


def _write_pickle(path, obj, protocol=4):
    with open(path, "wb") as handle:
        pickle.dump(obj, handle, protocol=protocol)
    return path


# ----------------------------------------------------------------------------------------------------
# VGGFace2 ResNet-50: v1 architecture


def test_vggface2_resnet50_is_v1_with_torchvision_names():
    model = vggface2_resnet50()
    reference = torchvision.models.resnet50(weights=None, num_classes=8631)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    assert ours == theirs

    pool = model.maxpool
    assert isinstance(pool, nn.MaxPool2d)
    assert (pool.kernel_size, pool.stride, pool.padding, pool.ceil_mode) == (3, 2, 0, True)
    assert reference.maxpool.padding == 1 and not reference.maxpool.ceil_mode  # torchvision is different
    assert isinstance(model.avgpool, nn.AdaptiveAvgPool2d)

    for stage, stride in zip((model.layer1, model.layer2, model.layer3, model.layer4), (1, 2, 2, 2)):
        for index, block in enumerate(stage):
            expected = (stride, stride) if index == 0 else (1, 1)
            assert block.conv1.kernel_size == (1, 1) and block.conv1.stride == expected
            assert block.conv2.kernel_size == (3, 3) and block.conv2.stride == (1, 1)
            assert block.conv3.stride == (1, 1)
        if stride == 2:
            assert stage[0].downsample[0].stride == (2, 2)
            assert stage[0].downsample[0].kernel_size == (1, 1)
    assert reference.layer2[0].conv2.stride == (2, 2) and reference.layer2[0].conv1.stride == (1, 1)


@pytest.mark.parametrize("size", [32, 48, 224])
def test_vggface2_resnet50_any_input_size(size):
    model = vggface2_resnet50()
    assert as_feature_extractor(model) == 2048
    model.eval()
    with torch.no_grad():
        features = model(torch.randn(1, 3, size, size))
    assert features.shape == (1, 2048)
    assert torch.isfinite(features).all()


# ----------------------------------------------------------------------------------------------------
# VGGFace2 weights: the v1 / v1.5 trap and the loader


def test_vggface2_weights_load_and_v15_silently_differs(vggface2_pkl, vggface2_arrays):
    ours = vggface2_resnet50()
    digest = load_vggface2_weights(ours, vggface2_pkl)
    assert digest == hashlib.sha256(vggface2_pkl.read_bytes()).hexdigest() == sha256_file(vggface2_pkl)
    state = ours.state_dict()
    for name, array in vggface2_arrays.items():
        assert torch.equal(state[name], torch.from_numpy(array)), name

    # The trap: the same names load into torchvision's v1.5 resnet50 without a single error ...
    v15 = torchvision.models.resnet50(weights=None, num_classes=8631)
    result = v15.load_state_dict({k: torch.from_numpy(v) for k, v in vggface2_arrays.items()}, strict=False)
    assert not result.unexpected_keys
    assert all(k.endswith("num_batches_tracked") for k in result.missing_keys)
    for name, value in v15.state_dict().items():
        assert torch.equal(value, state[name]), name

    # ... and compute a different network.
    ours.eval()
    v15.eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        a, b = ours(x), v15(x)
    assert a.shape == b.shape == (2, 8631)
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    relative = (a - b).norm() / a.norm()
    assert relative > 0.05, f"v1 and v1.5 outputs should differ clearly, relative difference {relative:.3g}"
    assert not torch.allclose(a, b, rtol=1e-2, atol=1e-3)


def test_vggface2_loader_ignores_fc_after_feature_extraction(vggface2_pkl, vggface2_arrays):
    model = vggface2_resnet50()
    as_feature_extractor(model)
    load_vggface2_weights(model, vggface2_pkl)
    assert torch.equal(model.layer4[2].conv3.weight, torch.from_numpy(vggface2_arrays["layer4.2.conv3.weight"]))


@pytest.mark.parametrize("protocol", [2, 5])
@pytest.mark.parametrize("container", [dict, collections.OrderedDict])
def test_python3_pickles_of_arrays_load_too(tmp_path, protocol, container):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    arrays = container(
        (k, np.random.rand(*v.shape).astype(np.float32))
        for k, v in model.state_dict().items()
        if not k.endswith("num_batches_tracked")
    )
    path = _write_pickle(tmp_path / "w.pkl", arrays, protocol=protocol)
    load_vggface2_weights(model, path)
    for name, array in arrays.items():
        assert torch.equal(model.state_dict()[name], torch.from_numpy(array))


class _RunsShell:
    def __init__(self, sentinel):
        self.sentinel = sentinel

    def __reduce__(self):
        return os.system, (f"touch '{self.sentinel}'",)


class _RunsPython:
    def __init__(self, sentinel):
        self.sentinel = sentinel

    def __reduce__(self):
        return builtins.exec, (f"open({str(self.sentinel)!r}, 'w').close()",)


@pytest.mark.parametrize("payload, refused_name", [(_RunsShell, "system"), (_RunsPython, "builtins.exec")])
def test_malicious_pickle_is_refused_without_running(tmp_path, payload, refused_name):
    # The payload is live: an ordinary unpickler runs it.
    live = tmp_path / "LIVE"
    pickle.loads(pickle.dumps(payload(live), protocol=2))
    assert live.exists()

    sentinel = tmp_path / "SENTINEL"
    weights = {"conv1.weight": np.zeros((1,), np.float32), "evil": payload(sentinel)}
    path = _write_pickle(tmp_path / "resnet50_ft_weight.pkl", weights, protocol=2)
    with pytest.raises(UserError) as info:
        load_vggface2_weights(vggface2_resnet50(), path)
    message = str(info.value)
    assert "refuses to load" in message and str(path) in message and refused_name in message
    assert not sentinel.exists()


def test_vggface2_missing_file(tmp_path):
    path = tmp_path / "resnet50_ft_weight.pkl"
    with pytest.raises(UserError, match="pretrained/README.md") as info:
        load_vggface2_weights(vggface2_resnet50(), path)
    assert str(path) in str(info.value)


def test_vggface2_missing_and_misshaped_keys(tmp_path, vggface2_arrays):
    body = {k: v for k, v in vggface2_arrays.items() if not k.startswith("fc.")}
    model = vggface2_resnet50()
    as_feature_extractor(model)

    missing = dict(body)
    del missing["layer3.2.bn2.running_var"]
    path = _write_pickle(tmp_path / "missing.pkl", missing)
    with pytest.raises(UserError, match=r"layer3\.2\.bn2\.running_var") as info:
        load_vggface2_weights(model, path)
    assert str(path) in str(info.value)

    misshaped = dict(body)
    misshaped["layer1.0.conv1.weight"] = np.zeros((64, 64, 3, 3), np.float32)
    path = _write_pickle(tmp_path / "misshaped.pkl", misshaped)
    with pytest.raises(UserError, match=r"layer1\.0\.conv1\.weight"):
        load_vggface2_weights(model, path)

    unknown = dict(body)
    unknown["layer5.0.conv1.weight"] = np.zeros((1,), np.float32)
    path = _write_pickle(tmp_path / "unknown.pkl", unknown)
    with pytest.raises(UserError, match=r"layer5\.0\.conv1\.weight"):
        load_vggface2_weights(model, path)


def test_vggface2_not_a_weight_pickle(tmp_path):
    model = vggface2_resnet50()
    with pytest.raises(UserError, match="not a dict"):
        load_vggface2_weights(model, _write_pickle(tmp_path / "list.pkl", [1, 2, 3]))
    with pytest.raises(UserError, match="not a numeric array"):
        load_vggface2_weights(model, _write_pickle(tmp_path / "str.pkl", {"conv1.weight": "text"}))
    garbage = tmp_path / "garbage.pkl"
    garbage.write_bytes(b"this is not a pickle at all")
    with pytest.raises(UserError, match="not a readable pickle"):
        load_vggface2_weights(model, garbage)


# ----------------------------------------------------------------------------------------------------
# MS-Celeb ResNet-18


def _msceleb_checkpoint(fc_classes):
    source = torchvision.models.resnet18(weights=None, num_classes=fc_classes)
    state = {k: torch.from_numpy(v) for k, v in _randomised_state(source, seed=5).items()}
    state.update({k: v for k, v in source.state_dict().items() if k.endswith("num_batches_tracked")})
    return {"state_dict": {"module." + k: v for k, v in state.items()}, "epoch": 30}, state


@pytest.mark.parametrize("fc_classes", [1000, 7])
def test_msceleb_checkpoint_loads(tmp_path, fc_classes):
    checkpoint, state = _msceleb_checkpoint(fc_classes)
    path = tmp_path / "resnet18_msceleb.pth"
    torch.save(checkpoint, path)
    model = msceleb_resnet18()
    fc_before = model.fc.weight.clone()
    assert load_msceleb_weights(model, path) == hashlib.sha256(path.read_bytes()).hexdigest()
    loaded = model.state_dict()
    for name, value in state.items():
        if not name.startswith("fc."):
            assert torch.equal(loaded[name], value), name
    assert torch.equal(model.fc.weight, fc_before)  # fc is never taken from the checkpoint

    extractor = msceleb_resnet18()
    assert as_feature_extractor(extractor) == 512
    load_msceleb_weights(extractor, path)
    assert torch.equal(extractor.conv1.weight, state["conv1.weight"])


class _NotATensor:
    pass


def test_msceleb_refuses_non_tensor_checkpoint(tmp_path):
    checkpoint, _ = _msceleb_checkpoint(1000)
    checkpoint["extra"] = _NotATensor()
    path = tmp_path / "resnet18_msceleb.pth"
    torch.save(checkpoint, path)
    with pytest.raises(UserError, match="refused for safety") as info:
        load_msceleb_weights(msceleb_resnet18(), path)
    assert str(path) in str(info.value)


def test_msceleb_missing_file_and_bad_keys(tmp_path):
    with pytest.raises(UserError, match="pretrained/README.md"):
        load_msceleb_weights(msceleb_resnet18(), tmp_path / "absent.pth")

    checkpoint, _ = _msceleb_checkpoint(1000)
    del checkpoint["state_dict"]["module.layer2.1.bn1.weight"]
    torch.save(checkpoint, tmp_path / "missing.pth")
    with pytest.raises(UserError, match=r"layer2\.1\.bn1\.weight"):
        load_msceleb_weights(msceleb_resnet18(), tmp_path / "missing.pth")

    checkpoint, _ = _msceleb_checkpoint(1000)
    checkpoint["state_dict"]["module.conv1.weight"] = torch.zeros(64, 3, 3, 3)
    torch.save(checkpoint, tmp_path / "misshaped.pth")
    with pytest.raises(UserError, match=r"conv1\.weight"):
        load_msceleb_weights(msceleb_resnet18(), tmp_path / "misshaped.pth")

    checkpoint, _ = _msceleb_checkpoint(1000)
    checkpoint["state_dict"]["module.extra.weight"] = torch.zeros(1)
    torch.save(checkpoint, tmp_path / "unexpected.pth")
    with pytest.raises(UserError, match=r"extra\.weight"):
        load_msceleb_weights(msceleb_resnet18(), tmp_path / "unexpected.pth")

    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="garbage.pth"):
        load_msceleb_weights(msceleb_resnet18(), tmp_path / "garbage.pth")


# ----------------------------------------------------------------------------------------------------
# ConceptNet


def _images(batch=4, size=32, seed=0):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_concept_net_outputs():
    torch.manual_seed(0)
    model = ConceptNet(7, pretrained=None)
    assert model.weights_sha256 is None
    model.eval()
    with torch.no_grad():
        out = model(_images())
    assert set(out) == {"e", "n", "logits", "confidence"}
    assert out["e"].shape == out["n"].shape == (4, 256)
    assert out["logits"].shape == (4, 7) and out["confidence"].shape == (4,)
    assert torch.allclose(out["e"].norm(dim=1), torch.ones(4), atol=1e-5)
    assert torch.allclose(out["n"].norm(dim=1), torch.ones(4), atol=1e-5)
    assert ((out["confidence"] > 0) & (out["confidence"] < 1)).all()

    head = model.classifier
    z = head.out(F.relu(head.hidden(16.0 * out["e"])))  # the class branch reads sqrt(256) * e by default
    assert torch.allclose(out["logits"], out["confidence"][:, None] * z, atol=1e-6)
    assert torch.allclose(out["confidence"], torch.sigmoid(head.confidence(out["e"])).squeeze(1))


def test_confidence_classifier_alone():
    head = ConfidenceClassifier(5)
    logits, a = head(F.normalize(torch.randn(3, 256), dim=1))
    assert logits.shape == (3, 5) and a.shape == (3,)


def test_scaled_classifier_input_is_a_reparametrisation_of_the_published_head():
    """--classifier_input scaled computes the published head's function with hidden weights x16: same
    function family, only the starting point and the pace of training differ. 'unit' is the published head."""
    torch.manual_seed(0)
    e = F.normalize(torch.randn(6, 256), dim=1)
    scaled, unit = ConfidenceClassifier(7), ConfidenceClassifier(7, input_mode="unit")
    unit.load_state_dict(scaled.state_dict())
    with torch.no_grad():
        z_unit = unit.out(F.relu(unit.hidden(e)))
        assert torch.allclose(unit(e)[0], unit(e)[1][:, None] * z_unit, atol=1e-7)
        unit.hidden.weight.mul_(16.0)
        for got, want in zip(scaled(e), unit(e)):
            assert torch.allclose(got, want, atol=1e-5)
    p_net, u_net = PerceptNet(7).eval(), PerceptNet(7, classifier_input="unit").eval()
    u_net.load_state_dict(p_net.state_dict())
    with torch.no_grad():
        u_net.classifier[0].weight.mul_(16.0)
        x = _images(batch=2)
        assert torch.allclose(p_net(x)["logits"], u_net(x)["logits"], atol=1e-5)
    with pytest.raises(ValueError):
        ConfidenceClassifier(7, input_mode="double")


def test_frozen_concept_reads_the_classifier_input_of_its_checkpoint():
    from models.concept import frozen_concept

    model = ConceptNet(3, classifier_input="unit")
    meta = {"model": "ConceptNet", "classes": ["a", "b", "c"]}  # a checkpoint from before the flag
    assert frozen_concept({"model": model.state_dict(), "meta": meta}, torch.device("cpu")).classifier.input_scale == 1
    meta["classifier_input"] = "scaled"
    assert frozen_concept({"model": model.state_dict(), "meta": meta}, torch.device("cpu")).classifier.input_scale == 16


def test_concept_net_gradients_and_frozen_backbone():
    torch.manual_seed(0)
    model = ConceptNet(7, pretrained=None)
    model.train()
    out = model(_images())
    loss = out["logits"].square().mean() + (out["e"] * out["n"]).sum()
    loss.backward()
    for name, param in model.non_emotion.backbone.named_parameters():
        assert not param.requires_grad and param.grad is None, name
    for name, param in model.non_emotion.head.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    for name, param in model.emotion.named_parameters():
        assert param.grad is not None, name
    for name, param in model.classifier.named_parameters():
        assert param.grad is not None, name


@pytest.mark.parametrize("bn_update", [False, True])
def test_concept_net_nonemotion_batchnorm(bn_update):
    torch.manual_seed(0)
    model = ConceptNet(7, pretrained=None, nonemotion_bn_update=bn_update)
    model.eval()
    model.train()
    assert model.training and model.emotion.backbone.training and model.non_emotion.head.training
    assert model.non_emotion.backbone.training == bn_update
    frozen_bn = model.non_emotion.backbone.bn1
    trained_bn = model.emotion.backbone.bn1
    before_frozen, before_trained = frozen_bn.running_mean.clone(), trained_bn.running_mean.clone()
    with torch.no_grad():
        model(_images())
    assert not torch.equal(trained_bn.running_mean, before_trained)
    assert torch.equal(frozen_bn.running_mean, before_frozen) != bn_update
    model.eval()
    assert not model.non_emotion.backbone.training


def test_emotion_forward_skips_non_emotion_encoder():
    torch.manual_seed(0)
    model = ConceptNet(7, pretrained=None).eval()
    calls = []
    model.non_emotion.register_forward_hook(lambda *args: calls.append("encoder"))
    model.non_emotion.backbone.register_forward_hook(lambda *args: calls.append("backbone"))
    x = _images(batch=2)
    with torch.no_grad():
        only = model.emotion_forward(x)
        assert calls == []
        full = model(x)
    assert calls == ["backbone", "encoder"]
    assert set(only) == {"e", "logits", "confidence"}
    for key in only:
        assert torch.equal(only[key], full[key])


def test_encoder_flips_rgb_to_bgr():
    torch.manual_seed(0)
    backbone = vggface2_resnet50()
    as_feature_extractor(backbone)
    encoder = Encoder(backbone).eval()
    seen = []
    backbone.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    x = _images(batch=2)
    with torch.no_grad():
        e = encoder(x)
        manual = F.normalize(encoder.head(backbone(x[:, [2, 1, 0]])), dim=1)
        unflipped = F.normalize(encoder.head(backbone(x)), dim=1)
    assert torch.equal(seen[0], x[:, [2, 1, 0]])
    assert torch.allclose(e, manual, atol=1e-6)
    assert not torch.allclose(e, unflipped, atol=1e-4)


def test_concept_net_channels_last_and_autocast():
    torch.manual_seed(0)
    model = ConceptNet(7, pretrained=None).eval().to(memory_format=torch.channels_last)
    x = _images(batch=2).to(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out["e"].dtype == torch.float32
    assert torch.allclose(out["e"].norm(dim=1), torch.ones(2), atol=1e-5)
    assert torch.isfinite(out["logits"].float()).all()


def test_concept_net_pretrained_loads_both_backbones(vggface2_pkl, vggface2_arrays):
    model = ConceptNet(7, pretrained=str(vggface2_pkl))
    assert model.weights_sha256 == sha256_file(vggface2_pkl)
    for backbone in (model.emotion.backbone, model.non_emotion.backbone):
        assert isinstance(backbone.fc, nn.Identity)
        state = backbone.state_dict()
        for name in ("conv1.weight", "bn1.running_var", "layer2.0.conv1.weight", "layer4.2.bn3.bias"):
            assert torch.equal(state[name], torch.from_numpy(vggface2_arrays[name])), name
    assert model.emotion.backbone.conv1.weight.data_ptr() != model.non_emotion.backbone.conv1.weight.data_ptr()


def test_concept_net_non_emotion_encoder_from_its_own_file(tmp_path, vggface2_pkl, vggface2_arrays):
    """--non_emotion_pretrained: the non-emotion backbone reads another file of the same format, the emotion
    backbone still --pretrained; each sha256 is kept."""
    other_arrays = _randomised_state(torchvision.models.resnet50(weights=None, num_classes=5), seed=2)
    other = tmp_path / "other_resnet50_ft_weight.pkl"
    other.write_bytes(_python2_style_pickle(other_arrays))
    model = ConceptNet(7, pretrained=str(vggface2_pkl), non_emotion_pretrained=str(other))
    assert model.weights_sha256 == sha256_file(vggface2_pkl)
    assert model.non_emotion_weights_sha256 == sha256_file(other)
    emotion, non_emotion = model.emotion.backbone.state_dict(), model.non_emotion.backbone.state_dict()
    for name in ("conv1.weight", "bn1.running_var", "layer4.2.bn3.bias"):
        assert torch.equal(emotion[name], torch.from_numpy(vggface2_arrays[name])), name
        assert torch.equal(non_emotion[name], torch.from_numpy(other_arrays[name])), name
    assert not any(p.requires_grad for p in model.non_emotion.backbone.parameters())
    # without it, both start from --pretrained, and the recorded sha256 says so
    assert ConceptNet(7, pretrained=str(vggface2_pkl)).non_emotion_weights_sha256 == sha256_file(vggface2_pkl)


def test_concept_net_missing_weights_is_user_error(tmp_path):
    with pytest.raises(UserError, match="pretrained/README.md"):
        ConceptNet(7, pretrained=str(tmp_path / "resnet50_ft_weight.pkl"))


# ----------------------------------------------------------------------------------------------------
# PerceptNet


@pytest.mark.parametrize("vad", [False, True])
def test_percept_net_outputs(vad):
    torch.manual_seed(0)
    model = PerceptNet(7, pretrained=None, vad=vad).eval()
    assert model.weights_sha256 is None
    seen = []
    model.encoder.backbone.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    x = _images(batch=3)
    with torch.no_grad():
        out = model(x)
    assert torch.equal(seen[0], x)  # RGB in, no channel flip
    assert set(out) == ({"p", "logits", "vad"} if vad else {"p", "logits"})
    assert out["p"].shape == (3, 256) and out["logits"].shape == (3, 7)
    assert torch.allclose(out["p"].norm(dim=1), torch.ones(3), atol=1e-5)
    if vad:
        assert out["vad"].shape == (3, 3)


def test_percept_net_pretrained(tmp_path):
    checkpoint, state = _msceleb_checkpoint(1000)
    path = tmp_path / "resnet18_msceleb.pth"
    torch.save(checkpoint, path)
    model = PerceptNet(8, pretrained=str(path), vad=True)
    assert model.weights_sha256 == sha256_file(path)
    assert torch.equal(model.encoder.backbone.layer3[1].conv2.weight, state["layer3.1.conv2.weight"])
    model.train()
    out = model(_images(batch=2))
    (out["logits"].sum() + out["vad"].sum()).backward()
    assert model.encoder.backbone.conv1.weight.grad is not None


# ----------------------------------------------------------------------------------------------------
# the backbone registry


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_registry_builds_feature_extractors_of_the_stated_width(name):
    model, sha = build_backbone(name)
    assert sha is None
    with torch.no_grad():
        features = model.eval()(_images(batch=2))
    assert features.shape == (2, BACKBONES[name].width)


@pytest.mark.parametrize("name", ["mobilenet_v3_large", "efficientnet_b0", "resnet34"])
def test_registry_loads_torchvision_layout_with_any_head(tmp_path, name):
    """A torchvision-layout checkpoint ({"state_dict": ...}, 'module.' prefixes, a 5-way head) loads into
    PerceptNet(backbone=name); the head is ignored, everything else is taken."""
    source = getattr(torchvision.models, name)(weights=None, num_classes=5)
    state = {"module." + k: v + 0.01 if v.is_floating_point() else v for k, v in source.state_dict().items()}
    path = tmp_path / f"{name}.pth"
    torch.save({"state_dict": state}, path)
    model = PerceptNet(7, pretrained=str(path), backbone=name)
    assert model.weights_sha256 == sha256_file(path)
    loaded = model.encoder.backbone.state_dict()
    for key in source.state_dict():
        if not key.startswith(("fc.", "classifier.")):
            assert torch.equal(loaded[key], state["module." + key]), key
    assert not model.encoder.flip_bgr


def test_registry_unknown_name_and_missing_default_weights():
    with pytest.raises(UserError, match="unknown backbone 'resnet9'"):
        build_backbone("resnet9")
    assert default_weights("resnet18") == os.path.join("pretrained", "resnet18_msceleb.pth")
    with pytest.raises(UserError, match="no default weight file"):
        default_weights("efficientnet_b0")
    assert BACKBONES["vggface2_resnet50"].bgr and "vggface2_resnet50" not in PERCEPT_BACKBONES
