"""tools/pretrain_identity.py: the synthetic face-identity backbones, in the real weight files' formats.

Tiny settings (6 people x 6 images, 32 px, 1 epoch): the files and their formats, loading through the real
loaders (ConceptNet / PerceptNet), the settings cache, determinism, and user errors.
"""

import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from models.backbones import (
    as_feature_extractor,
    load_msceleb_weights,
    load_vggface2_weights,
    msceleb_resnet18,
    vggface2_resnet50,
)
from models.concept import ConceptNet
from models.percept import PerceptNet
from tests.conftest import REPO, assert_user_error, run_script
from tools import pretrain_identity as pi

SCRIPT = os.path.join("tools", "pretrain_identity.py")
PEOPLE = 6
TINY = [
    "--identities",
    PEOPLE,
    "--images_per_identity",
    6,
    "--size",
    32,
    "--input_size",
    32,
    "--epochs",
    1,
    "--batch_size",
    16,
]
PKL = "synthetic-identity_resnet50_ft_weight.pkl"
PTH = "synthetic-identity_resnet18_msceleb.pth"
REPORT = "identity_pretrain.json"


def run_inprocess(args, capfd):
    """``main(argv)`` in this interpreter (no start-up cost); the global RNG state is left as it was."""
    capfd.readouterr()
    states = np.random.get_state(), torch.get_rng_state()
    code = 0
    try:
        pi.main([str(a) for a in args])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        np.random.set_state(states[0])
        torch.set_rng_state(states[1])
    out, err = capfd.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


def sha256(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def read_report(folder):
    with open(os.path.join(folder, REPORT)) as handle:
        return json.load(handle)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One run of the tool as a user runs it: both networks, tiny settings."""
    out = tmp_path_factory.mktemp("identity") / "out"
    proc = run_script(SCRIPT, ["--out", out, *TINY])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_writes_the_documented_files(trained):
    out, proc = trained
    assert sorted(os.listdir(out)) == sorted([PKL, PTH, REPORT])
    report = read_report(out)
    assert set(report["archs"]) == {"resnet50", "resnet18"}
    for arch, name in (("resnet50", PKL), ("resnet18", PTH)):
        entry = report["archs"][arch]
        assert entry["file"] == name and entry["sha256"] == sha256(out / name)
        assert entry["settings"]["identities"] == PEOPLE and entry["chance"] == pytest.approx(1 / PEOPLE)
        assert 0.0 <= entry["heldout_identity_top1"] <= 1.0
        assert entry["heldout_images"] == PEOPLE and entry["train_images"] == PEOPLE * 5  # 1 in 5 held out
        assert entry["train_seconds"] > 0 and len(entry["key"]) == 16
        assert f"{arch} identity epoch 1/1 | loss" in proc.stdout and "heldout_identity_acc" in proc.stdout
    assert report["archs"]["resnet50"]["input_channels"] == "BGR"
    assert report["archs"]["resnet18"]["input_channels"] == "RGB"


def test_pickle_is_the_vggface2_format_with_an_identity_fc(trained):
    out, _ = trained
    data = (out / PKL).read_bytes()
    assert data[:2] == b"\x80\x02"  # protocol 2
    assert b"numpy.core.multiarray" in data[:200]  # numpy 1.x names, as the Python-2 original
    arrays = pickle.loads(data, encoding="latin1")
    assert isinstance(arrays, dict) and all(isinstance(k, str) for k in arrays)
    assert all(isinstance(v, np.ndarray) for v in arrays.values())
    assert arrays["fc.weight"].shape == (PEOPLE, 2048) and arrays["fc.bias"].shape == (PEOPLE,)
    expected = {k for k in pi.build_model("resnet50", PEOPLE).state_dict() if not k.endswith("num_batches_tracked")}
    assert set(arrays) == expected


def test_checkpoint_is_the_msceleb_format(trained):
    out, _ = trained
    checkpoint = torch.load(out / PTH, map_location="cpu", weights_only=True)
    state = checkpoint["state_dict"]
    assert state["fc.weight"].shape == (PEOPLE, 512)
    assert checkpoint["num_classes"] == PEOPLE and checkpoint["arch"] == "resnet18"


def _backbone_tensors(model, name):
    """Tensor ``name`` (a torchvision ResNet state-dict name) of every ResNet backbone inside ``model``."""
    from torchvision.models import ResNet

    backbones = [m for m in model.modules() if isinstance(m, ResNet)]
    assert backbones
    return [backbone.state_dict()[name] for backbone in backbones]


def test_both_load_through_the_real_loaders(trained):
    out, _ = trained
    arrays = pickle.loads((out / PKL).read_bytes(), encoding="latin1")
    concept = ConceptNet(7, pretrained=str(out / PKL))
    assert concept.weights_sha256 == sha256(out / PKL)
    for name in ("layer1.0.conv1.weight", "layer4.2.bn3.running_var", "conv1.weight"):
        tensors = _backbone_tensors(concept, name)
        assert len(tensors) == 2  # emotion and non-emotion encoders
        for tensor in tensors:
            assert torch.equal(tensor, torch.from_numpy(arrays[name])), name

    state = torch.load(out / PTH, map_location="cpu", weights_only=True)["state_dict"]
    percept = PerceptNet(7, pretrained=str(out / PTH))
    assert percept.weights_sha256 == sha256(out / PTH)
    for name in ("layer2.0.downsample.0.weight", "layer4.1.bn2.running_mean", "bn1.weight"):
        for tensor in _backbone_tensors(percept, name):
            assert torch.equal(tensor, state[name]), name

    # the plain loaders: a feature extractor ignores the file's fc; a model of the same width takes it
    model = vggface2_resnet50()
    as_feature_extractor(model)
    load_vggface2_weights(model, out / PKL)
    same = vggface2_resnet50(num_classes=PEOPLE)
    load_vggface2_weights(same, out / PKL)
    assert torch.equal(same.fc.weight, torch.from_numpy(arrays["fc.weight"]))
    load_msceleb_weights(msceleb_resnet18(), out / PTH)


def test_rerun_with_the_same_settings_reuses_the_files_without_torch(trained):
    out, _ = trained
    before = {name: os.stat(out / name).st_mtime_ns for name in (PKL, PTH, REPORT)}
    code = (
        "import sys, runpy; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__'); "
        "print('torch imported:', 'torch' in sys.modules)"
    )
    tic = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", code, os.path.join(REPO, SCRIPT), "--out", str(out), *map(str, TINY)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    seconds = time.perf_counter() - tic
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("reusing ") == 2 and "torch imported: False" in proc.stdout, proc.stdout
    assert seconds < 10  # about 0.2 s on an idle machine; generous for a loaded test machine
    assert {name: os.stat(out / name).st_mtime_ns for name in (PKL, PTH, REPORT)} == before


def test_changed_setting_or_force_retrains(trained, tmp_path, capfd):
    source, _ = trained
    out = tmp_path / "copy"
    shutil.copytree(source, out)
    old = read_report(out)
    pkl_mtime = os.stat(out / PKL).st_mtime_ns

    proc = run_inprocess(["--out", out, *TINY, "--arch", "resnet18", "--lr", "0.001"], capfd)
    assert proc.returncode == 0, proc.stderr
    assert "reusing" not in proc.stdout and "resnet18 identity epoch 1/1" in proc.stdout
    new = read_report(out)
    assert new["archs"]["resnet18"]["key"] != old["archs"]["resnet18"]["key"]
    assert new["archs"]["resnet18"]["settings"]["lr"] == 0.001
    assert new["archs"]["resnet18"]["sha256"] == sha256(out / PTH)
    assert new["archs"]["resnet50"] == old["archs"]["resnet50"]  # not asked for: untouched
    assert os.stat(out / PKL).st_mtime_ns == pkl_mtime

    # a file that no longer matches its recorded sha256 is not reused
    with open(out / PTH, "ab") as handle:
        handle.write(b"x")
    proc = run_inprocess(["--out", out, *TINY, "--arch", "resnet18", "--lr", "0.001"], capfd)
    assert proc.returncode == 0 and "reusing" not in proc.stdout
    assert read_report(out)["archs"]["resnet18"]["sha256"] == sha256(out / PTH)

    mtime = os.stat(out / PTH).st_mtime_ns
    proc = run_inprocess(["--out", out, *TINY, "--arch", "resnet18", "--lr", "0.001", "--force"], capfd)
    assert proc.returncode == 0 and "reusing" not in proc.stdout
    assert os.stat(out / PTH).st_mtime_ns != mtime


def test_expression_phase_fine_tunes_on_other_people_and_keeps_the_format(trained, tmp_path, capfd):
    source, _ = trained
    out = tmp_path / "expression"
    shutil.copytree(source, out)
    identity_only = read_report(out)["archs"]["resnet18"]
    assert not any(key.startswith("expression") for key in identity_only["settings"])  # caches made before stay valid

    args = ["--out", out, *TINY, "--arch", "resnet18", "--expression_epochs", "1", "--expression_per_class", "2"]
    proc = run_inprocess(args, capfd)
    assert proc.returncode == 0, proc.stderr
    assert "resnet18 identity epoch 1/1" in proc.stdout and "resnet18 expression epoch 1/1" in proc.stdout
    entry = read_report(out)["archs"]["resnet18"]
    assert entry["key"] != identity_only["key"]
    assert entry["settings"]["expression_epochs"] == 1 and entry["settings"]["expression_per_class"] == 2
    assert entry["settings"]["expression_seed"] == pi.EXPRESSION_SEED  # + --seed 0: not a demo or benchmark seed
    assert entry["expression_train_images"] == 2 * 7
    assert entry["expression_heldout_images"] == pi.EXPRESSION_HELDOUT_PER_CLASS * 7
    assert 0 <= entry["heldout_expression_top1"] <= 1 and 0 <= entry["heldout_identity_top1_after_expression"] <= 1
    assert len(entry["epochs_log"]) == 1 and len(entry["expression_epochs_log"]) == 1
    assert entry["sha256"] == sha256(out / PTH)
    # the expression head is not in the file: it is the MS-Celeb format with the identity fc, through the real loader
    state = torch.load(out / PTH, map_location="cpu", weights_only=True)["state_dict"]
    assert state["fc.weight"].shape[0] == PEOPLE and not any("expression" in name for name in state)
    percept = PerceptNet(7, pretrained=str(out / PTH))
    for tensor in _backbone_tensors(percept, "layer4.1.bn2.running_mean"):
        assert torch.equal(tensor, state["layer4.1.bn2.running_mean"])
    # and the fine-tuning changed the backbone that the identity-only file holds; expression alone (the default)
    # never reaches the identity fc
    before = torch.load(source / PTH, map_location="cpu", weights_only=True)["state_dict"]
    assert not torch.equal(before["layer4.1.conv2.weight"], state["layer4.1.conv2.weight"])
    assert "expression_identity_batch" not in entry["settings"]  # (its key is the one made before the option)
    assert torch.equal(before["fc.weight"], state["fc.weight"])
    # beside it, the network as it was before the fine-tuning: byte for byte the identity-only run's file, with
    # that run's settings and key, loading through the real loader
    only = out / pi.IDENTITY_ONLY_FILES["resnet18"]
    assert only.name == "synthetic-identity-only_resnet18_msceleb.pth"
    assert sha256(only) == sha256(source / PTH) == entry["identity_only"]["sha256"]
    assert entry["identity_only"]["key"] == identity_only["key"]
    assert PerceptNet(7, pretrained=str(only)).weights_sha256 == sha256(only)
    # a rerun reuses both; without the identity-only file the cache does not hold, and it trains again
    assert "reusing" in run_inprocess(args, capfd).stdout
    os.remove(only)
    proc = run_inprocess(args, capfd)
    assert proc.returncode == 0 and "reusing" not in proc.stdout and sha256(only) == sha256(source / PTH)

    # --expression_identity_batch 4: identity images ride with every expression batch and train the fc too
    joint = tmp_path / "joint"
    shutil.copytree(source, joint)
    proc = run_inprocess([*args[:1], joint, *args[2:], "--expression_identity_batch", "4"], capfd)
    assert proc.returncode == 0, proc.stderr
    entry_joint = read_report(joint)["archs"]["resnet18"]
    assert entry_joint["settings"]["expression_identity_batch"] == 4 and entry_joint["key"] != entry["key"]
    state_joint = torch.load(joint / PTH, map_location="cpu", weights_only=True)["state_dict"]
    assert not torch.equal(before["fc.weight"], state_joint["fc.weight"])
    assert not torch.equal(state["layer4.1.conv2.weight"], state_joint["layer4.1.conv2.weight"])


def test_expression_faces_are_other_people():
    from tools.make_synthetic_faces import generate_split

    train, labels, heldout, heldout_labels = pi.expression_faces(0, 2, 32)
    assert train.shape == (14, 32, 32, 3) and list(labels) == [c for c in range(7) for _ in range(2)]
    assert heldout.shape == (pi.EXPRESSION_HELDOUT_PER_CLASS * 7, 32, 32, 3) and len(heldout_labels) == len(heldout)
    demo = generate_split(0, "train", 2, 32)  # the demo's training faces (generator seed 0)
    assert not any(np.array_equal(a, d["image"]) for a, d in zip(train, demo))


def test_deterministic_for_a_seed(tmp_path, capfd):
    images_a = pi.render_identities(3, 3, 7, 32)
    images_b = pi.render_identities(3, 3, 7, 32, workers=2)
    for a, b in zip(images_a, images_b):
        assert np.array_equal(a, b)
    assert sorted(set(images_a[2][images_a[1] == 0])) == list(range(7))  # every person shows every class

    digests = []
    for name in ("a", "b"):
        proc = run_inprocess(["--out", tmp_path / name, *TINY, "--arch", "resnet18"], capfd)
        assert proc.returncode == 0, proc.stderr
        digests.append(read_report(tmp_path / name)["archs"]["resnet18"]["sha256"])
    assert digests[0] == digests[1]


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (["--identities", "1"], "--identities"),
        (["--images_per_identity", "3"], "--images_per_identity"),
        (["--epochs", "0"], "--epochs"),
        (["--lr", "nan"], "--lr"),
        (["--input_size", "64"], "--input_size"),
        (["--expression_epochs", "-1"], "--expression_epochs"),
        (["--expression_per_class", "0"], "--expression_per_class"),
        (["--expression_identity_batch", "-1"], "--expression_identity_batch"),
    ],
)
def test_bad_flag_is_one_error_line_and_writes_nothing(tmp_path, capfd, flags, fragment):
    out = tmp_path / "out"
    proc = run_inprocess(["--out", out, *TINY, *flags], capfd)
    assert_user_error(proc, fragment)
    assert not out.exists()


def test_unwritable_out_is_a_user_error(tmp_path, capfd):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    proc = run_inprocess(["--out", blocker / "out", *TINY], capfd)
    assert_user_error(proc, "--out")
    proc = run_inprocess(["--out", blocker, *TINY], capfd)
    assert_user_error(proc, "--out")
    assert sorted(os.listdir(tmp_path)) == ["a_file"]


def test_bad_flag_from_the_command_line(tmp_path):
    proc = run_script(SCRIPT, ["--out", tmp_path / "out", "--identities", "0"])
    assert_user_error(proc, "--identities")
    assert not (tmp_path / "out").exists()
