"""Runs that are killed (the whole run, or one worker of a torchrun job), diverge or are fed hostile
or mismatched files: nothing lost, nothing executed, nothing half-written."""

import json
import os
import pickle
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO, SIZE, assert_no_output, assert_user_error, read_log, run_inprocess, run_script, torchrun

from utils.checkpoint import resolve_resume, save_checkpoint
from utils.errors import UserError
from utils.log import RunLogger, chosen_record

TIMING = ("epoch_time", "train_images_per_s")
EPOCHS = 3
STAGES = {"concept": ("main_concept.py", []), "percept": ("main_percept.py", ["--concept_target", "none"])}
ONE_THREAD = {"OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}  # robust timings on a shared 2-core machine


def stage_args(stage, faces, out, epochs, *extra):
    return [
        "--data_path",
        faces / "train",
        "--eval_data_path",
        faces / "test",
        "--pretrained",
        "none",
        *STAGES[stage][1],
        "--epochs",
        epochs,
        "--output_dir",
        out,
        "--norm_cache",
        out.parent / "cache",
        "--input_size",
        SIZE,
        "--batch_size",
        8,
        "--device",
        "cpu",
        "--num_workers",
        0,
        *extra,
    ]


def command(stage, args):
    return [sys.executable, os.path.join(REPO, STAGES[stage][0]), *map(str, args)]


def strip(log):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in log]


# --------------------------------------------------------------------------- killing a run
def complete_log(out):
    """The log lines written so far (a line still being written does not count)."""
    path = out / "log.jsonl"
    text = path.read_text() if path.is_file() else ""
    return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]


def kill_inside_epoch_1(proc, out, victim=None, timeout=600):
    """Wait for epoch 0's log line (its checkpoint is saved before it), then SIGKILL the process
    ``victim()`` names (default ``proc``) about 40 % into epoch 1."""
    deadline = time.monotonic() + timeout
    while not complete_log(out):
        assert proc.poll() is None, f"the run ended with code {proc.returncode} before epoch 0 was logged"
        assert time.monotonic() < deadline, "epoch 0 was not logged in time"
        time.sleep(0.05)
    time.sleep(0.4 * complete_log(out)[0]["epoch_time"])
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(victim() if victim is not None else proc.pid, signal.SIGKILL)


def kill_then_resume(stage, args, out):
    """Run a stage with ``--resume auto`` in ``args``, SIGKILL it inside epoch 1, leave behind the
    temporary file a kill during a save would, and run the same command again; return that run."""
    cmd, env = command(stage, args), {**os.environ, **ONE_THREAD}
    victim = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        kill_inside_epoch_1(victim, out)
    finally:
        victim.kill()
        victim.wait()
    assert victim.returncode == -signal.SIGKILL
    assert 1 <= len(complete_log(out)) < EPOCHS
    (out / ".checkpoint-last.pth.k1ll3d.tmp").write_bytes(b"half a checkpoint")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def runs(faces, tmp_path_factory):
    """``runs(stage)`` -> (uninterrupted run's folder, killed-and-resumed run's folder, the resumed
    process): EPOCHS epochs of each, once per module; the uninterrupted run goes alongside."""
    done = {}

    def get(stage):
        if stage not in done:
            root = tmp_path_factory.mktemp(stage)
            with open(root / "straight.txt", "w") as log:
                straight = subprocess.Popen(
                    command(stage, stage_args(stage, faces, root / "straight", EPOCHS)),
                    cwd=REPO,
                    env={**os.environ, **ONE_THREAD},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
                try:
                    resumed = kill_then_resume(
                        stage, stage_args(stage, faces, root / "killed", EPOCHS, "--resume", "auto"), root / "killed"
                    )
                finally:
                    straight.wait(timeout=600)
            assert straight.returncode == 0, (root / "straight.txt").read_text()[-3000:]
            done[stage] = root / "straight", root / "killed", resumed
        return done[stage]

    return get


@pytest.mark.parametrize("stage", ["concept", "percept"])
def test_sigkill_then_resume_auto_matches_uninterrupted_run(stage, runs):
    straight, killed, resumed = runs(stage)
    assert f"resumed from {killed / 'checkpoint-last.pth'} at epoch" in resumed.stdout
    log = read_log(killed)
    assert [r["epoch"] for r in log] == list(range(EPOCHS))  # no epoch twice, none missing
    assert strip(log) == strip(read_log(straight))
    assert (killed / "log.csv").read_text().count("\n") == EPOCHS + 1
    assert not [f for f in os.listdir(killed) if f.endswith(".tmp")]  # the stale temporary file is gone


def worker_pids(agent_pid):
    """{rank: pid} of the worker processes torchrun's agent started (its children)."""
    workers = {}
    children = []
    for task in os.listdir(f"/proc/{agent_pid}/task"):
        try:
            with open(f"/proc/{agent_pid}/task/{task}/children") as handle:
                children += map(int, handle.read().split())
        except FileNotFoundError:  # a thread that just ended
            continue
    for pid in children:
        try:
            with open(f"/proc/{pid}/environ", "rb") as handle:
                variables = dict(v.split(b"=", 1) for v in handle.read().split(b"\0") if b"=" in v)
        except FileNotFoundError:
            continue
        if b"RANK" in variables:
            workers[int(variables[b"RANK"])] = pid
    return workers


def test_torchrun_restarts_a_killed_worker_and_the_job_continues_from_checkpoint_last(faces, tmp_path):
    """torchrun --max-restarts=1, rank 0 SIGKILLed in epoch 1 (of 2, to keep three torchrun starts cheap):
    the restarted workers continue from checkpoint-last.pth by themselves (no --resume given) and the log
    equals an uninterrupted run's."""
    epochs = 2

    def args(out):
        return stage_args("percept", faces, out, epochs, "--batch_size", 4)

    proc = torchrun("main_percept.py", args(tmp_path / "straight"))
    assert proc.returncode == 0, proc.stderr[-3000:]

    out = tmp_path / "elastic"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "--max-restarts=1",
        os.path.join(REPO, "main_percept.py"),
        *map(str, args(out)),
    ]
    with open(tmp_path / "elastic.txt", "w") as log:
        agent = subprocess.Popen(
            cmd,
            cwd=REPO,
            env={**os.environ, **ONE_THREAD},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            kill_inside_epoch_1(agent, out, victim=lambda: worker_pids(agent.pid)[0])
            agent.wait(timeout=300)
        finally:
            if agent.poll() is None:  # a hang: end the agent and its workers (its own process group)
                os.killpg(agent.pid, signal.SIGKILL)
            agent.wait()
    text = (tmp_path / "elastic.txt").read_text()
    assert agent.returncode == 0, text[-3000:]
    assert f"torchrun restarted the workers (restart 1); continuing from {out / 'checkpoint-last.pth'}" in text
    assert f"resumed from {out / 'checkpoint-last.pth'} at epoch" in text
    log = read_log(out)
    assert [r["epoch"] for r in log] == list(range(epochs))
    assert strip(log) == strip(read_log(tmp_path / "straight"))


def test_resume_rules_auto_and_torchrun_restart(tmp_path):
    last = str(tmp_path / "checkpoint-last.pth")
    assert resolve_resume("auto", tmp_path) == "" and resolve_resume("", tmp_path, "job-1") == ""
    assert resolve_resume("a.pth", tmp_path) == "a.pth"
    save_checkpoint(last, {"epoch": 3, "args": {"elastic_run_id": "job-1"}})
    assert resolve_resume("auto", tmp_path) == last
    assert resolve_resume("", tmp_path) == "" and resolve_resume("a.pth", tmp_path) == "a.pth"  # no restart
    assert resolve_resume("", tmp_path, "job-1") == last  # restarted: this job's progress
    assert resolve_resume("a.pth", tmp_path, "job-1") == last
    assert resolve_resume("", tmp_path, "job-2") == ""  # left there by another run: not taken
    assert resolve_resume("a.pth", tmp_path, "job-2") == "a.pth"


def test_log_matches_the_checkpoint_it_starts_from(tmp_path):
    """The log a resumed run continues: epochs before the start epoch once each (lines the checkpoint
    knows but the log lacks added, later or repeated lines dropped); a fresh run's log starts empty."""
    records = [{"epoch": e, "train_loss": 1.0 / (e + 1), "eval_acc": 10.0 * e} for e in range(4)]
    lines = [records[0], records[2], records[2], records[3]]  # epoch 1 missing, 2 twice, 3 not in the checkpoint
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"epoch": 4, "tr')
    (tmp_path / ".log.csv.x1.tmp").write_text("epoch\n")
    RunLogger(str(tmp_path), start_epoch=3, history=records[:3]).close()
    assert read_log(tmp_path) == records[:3]
    assert (tmp_path / "log.csv").read_text().splitlines() == ["epoch,train_loss,eval_acc"] + [
        f"{r['epoch']},{r['train_loss']},{r['eval_acc']}" for r in records[:3]
    ]
    assert not (tmp_path / ".log.csv.x1.tmp").exists()
    (tmp_path / "plain.txt").write_text("")  # files written atomically get an ordinary file's mode, not 0600
    assert (tmp_path / "log.jsonl").stat().st_mode == (tmp_path / "plain.txt").stat().st_mode
    RunLogger(str(tmp_path), start_epoch=0).close()
    assert not (tmp_path / "log.jsonl").exists() and not (tmp_path / "log.csv").exists()


def test_chosen_record_is_the_first_best_epoch_of_the_log(tmp_path):
    """What the benchmarks and the demo table report: the first epoch with the highest eval_acc (a line cut
    short by a kill and lines without the metric ignored); no such epoch is one clear error."""
    lines = [
        {"epoch": 0, "eval_acc": 20.0},
        {"epoch": 1, "eval_acc": 30.0},
        {"epoch": 2},
        {"epoch": 3, "eval_acc": 30.0},
    ]
    path = tmp_path / "log.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"epoch": 4, "ev')
    best, records = chosen_record(str(path))
    assert best == lines[1] and records == lines
    assert chosen_record(str(path), "epoch")[0] == lines[3]
    path.write_text(json.dumps({"epoch": 0}) + "\n")
    with pytest.raises(UserError, match="holds no epoch with eval_acc"):
        chosen_record(str(path))


def test_more_data_teacher_trains_on_the_students_faces_and_other_peoples(tmp_path):
    """benchmarks/ablation.py --teacher more_data: the teacher's folder holds every training face of the student
    (the same bytes) and --teacher_per_class more per class from another generator seed, none overwritten."""
    from argparse import Namespace
    from pathlib import Path

    from benchmarks.ablation import teacher_training_set
    from tools.make_synthetic_faces import make_dataset

    faces = tmp_path / "faces"
    make_dataset(str(faces), seed=0, size=32, train_per_class=2, test_per_class=1)
    union = Path(teacher_training_set(str(tmp_path), str(faces), 32, Namespace(data_seed=0, teacher_per_class=3)))
    classes = sorted(os.listdir(faces / "train"))
    assert sorted(os.listdir(union)) == classes
    for name in classes:
        own = sorted(os.listdir(faces / "train" / name))
        extra = sorted(os.listdir(tmp_path / "faces_extra" / "train" / name))
        assert len(own) == 2 and len(extra) == 3
        assert sorted(os.listdir(union / name)) == sorted([f"extra_{f}" for f in extra] + [f"own_{f}" for f in own])
        own_bytes = {(faces / "train" / name / f).read_bytes() for f in own}
        assert {(union / name / f"own_{f}").read_bytes() for f in own} == own_bytes
        assert not own_bytes & {(union / name / f"extra_{f}").read_bytes() for f in extra}


def test_ablation_reuses_a_finished_stage_run_with_the_same_arguments_only(tmp_path):
    """benchmarks/ablation.py runs a stage again only when its arguments or its inputs (the record of the run it
    reads) changed, --force is given, or the run did not finish; a failed run leaves no record to be reused;
    drop_checkpoints removes only the files named."""
    from benchmarks.ablation import drop_checkpoints, run

    out, log = tmp_path / "faces", str(tmp_path / "faces.log")
    argv = ["--out", out, "--size", 32, "--train_per_class", 1, "--test_per_class", 1]
    marker = out / "train" / "happy"

    def faces(args, force=False, inputs=None):
        return run("tools/make_synthetic_faces.py", args, log, str(out), "train", force, inputs)

    state = faces(argv)
    expected = {"argv": ["tools/make_synthetic_faces.py", *map(str, argv)], "inputs": None}
    assert state == expected and json.loads((out / "ablation_argv.json").read_text()) == expected
    first = sorted(os.listdir(marker))
    for file in first:
        os.remove(marker / file)
    faces(argv)  # reused: nothing is written again
    assert os.listdir(marker) == []
    faces(argv, force=True)
    assert sorted(os.listdir(marker)) == first
    for file in first:
        os.remove(marker / file)
    faces(argv, inputs={"teacher": "trained again"})  # the same arguments, another upstream run: run again
    assert sorted(os.listdir(marker)) == first
    assert json.loads((out / "ablation_argv.json").read_text())["inputs"] == {"teacher": "trained again"}
    for file in first:
        os.remove(marker / file)
    faces(argv[:-1] + [2])  # other arguments: run again
    assert len(os.listdir(marker)) == 1
    with pytest.raises(UserError, match="make_synthetic_faces.py failed"):
        faces(argv + ["--size", "x"])
    assert not (out / "ablation_argv.json").exists()
    for name in ("checkpoint-last.pth", "checkpoint-best.pth", "log.jsonl"):
        (tmp_path / name).write_text("x")
    drop_checkpoints(str(tmp_path), ["checkpoint-last.pth", "checkpoint-best.pth", "absent.pth"])
    assert sorted(p.name for p in tmp_path.glob("*.pth")) == [] and (tmp_path / "log.jsonl").exists()


def test_ablation_runs_seeds_at_once_and_keeps_each_seeds_figures(tmp_path, monkeypatch):
    """benchmarks/ablation.py --jobs 3: the seeds run side by side, every stage gets --amp when asked, and the
    report keeps each seed's figures under its seed whatever order the runs finish in; --jobs 0 is refused."""
    import threading

    import benchmarks.ablation as ablation

    calls, lock = [], threading.Lock()
    delays = {"0": 0.3, "1": 0.0, "2": 0.15}  # seed 0 finishes last

    def fake_run(script, argv, log, output_dir, done_file, force=False, inputs=None):
        seed = output_dir.rsplit("seed", 1)[1]
        time.sleep(delays[seed])
        with lock:
            calls.append((script, [str(a) for a in argv]))
        return {"argv": [script], "inputs": inputs}

    def fake_selected(output_dir):
        seed = int(output_dir.rsplit("seed", 1)[1])
        offset = 10.0 if "pool_bank" in output_dir else 0.0
        acc = 20.0 + seed + offset
        return {"epoch": seed, "val_acc": acc, "test_acc": acc, "test_mean_class_acc": acc, "final_test_acc": acc}

    monkeypatch.setattr(ablation, "run", fake_run)
    monkeypatch.setattr(ablation, "selected", fake_selected)
    monkeypatch.setattr(ablation, "make_dataset", lambda *a, **k: None)
    monkeypatch.setattr(ablation, "identity_weights", lambda *a, **k: {"resnet50": "r50.pkl", "resnet18": "r18.pth"})
    out = tmp_path / "bench"
    args = ["--seeds", "0,1,2", "--jobs", "3", "--amp", "--variants", "baseline,pool_bank", "--out", str(out)]
    ablation.main(args)
    assert (
        sorted(script for script, _ in calls)
        == ["high_confidence.py"] * 3 + ["main_concept.py"] * 3 + ["main_percept.py"] * 6
    )
    assert all("--amp" in argv for _, argv in calls)
    report = json.loads((out / "ablation-identity.json").read_text())
    for seed in range(3):
        assert report["runs"]["baseline"][str(seed)]["test_acc"] == 20.0 + seed
        assert report["runs"]["pool_bank"][str(seed)]["test_acc"] == 30.0 + seed
    assert [row["test_acc"] for row in report["concept"]] == [20.0, 21.0, 22.0]
    bank = next(row for row in report["summary"] if row["variant"] == "pool_bank")
    assert bank["minus_baseline"] == pytest.approx(10.0) and bank["minus_baseline_std"] == pytest.approx(0.0)
    with pytest.raises(UserError, match="--jobs must be at least 1"):
        ablation.parse_args(["--jobs", "0"])


def test_ablation_non_emotion_identity_only_reaches_stage_1(tmp_path, monkeypatch):
    """--non_emotion_identity_only: stage 1's non-emotion encoder reads the stand-in as it was before the expression
    fine-tuning (and only stage 1 gets the flag); without --expression_epochs it is one sentence."""
    import benchmarks.ablation as ablation

    calls = []
    monkeypatch.setattr(
        ablation, "run", lambda script, argv, *a, **k: calls.append((script, [str(x) for x in argv])) or {}
    )
    figures = ("epoch", "val_acc", "test_acc", "test_mean_class_acc", "final_test_acc")
    monkeypatch.setattr(ablation, "selected", lambda _: dict.fromkeys(figures, 1.0))
    monkeypatch.setattr(ablation, "make_dataset", lambda *a, **k: None)
    weights = {"resnet50": "r50.pkl", "resnet18": "r18.pth", "resnet50_identity_only": "r50-id.pkl"}
    monkeypatch.setattr(ablation, "identity_weights", lambda *a, **k: weights)
    args = ["--seeds", "0", "--variants", "baseline", "--expression_epochs", "4", "--out", str(tmp_path / "b")]
    ablation.main([*args, "--non_emotion_identity_only"])
    stage1 = [argv for script, argv in calls if script == "main_concept.py"]
    assert len(stage1) == 1 and stage1[0][stage1[0].index("--pretrained") + 1] == "r50.pkl"
    assert stage1[0][stage1[0].index("--non_emotion_pretrained") + 1] == "r50-id.pkl"
    assert not any("--non_emotion_pretrained" in argv for script, argv in calls if script != "main_concept.py")
    with pytest.raises(UserError, match="needs --expression_epochs"):
        ablation.parse_args(["--non_emotion_identity_only"])


def test_every_ablation_variant_is_a_valid_stage3_command():
    """An hours-long benchmark must not fail at its first stage-3 run of a variant: each variant's flags parse in
    main_percept.py's parser, and the combined variant is the calibrated target with the KL weight 4."""
    from benchmarks.ablation import VARIANTS
    from utils.cli import percept_parser

    for name, flags in VARIANTS.items():
        args = percept_parser().parse_args(flags)
        assert (args.concept_target == "none") == (name == "baseline"), name
    kl4 = percept_parser().parse_args(VARIANTS["pool_bank_calibrated_kl4"])
    assert (kl4.pool_features, kl4.kl_temperature, kl4.gamma, kl4.beta) == ("bank", "auto", 4.0, 1.0)


# --------------------------------------------------------------------------- files of another kind
def test_checkpoint_of_another_kind_is_refused_before_anything_is_written(runs, faces, tmp_path, capfd):
    concept, percept = runs("concept")[0], runs("percept")[0]
    out = tmp_path / "out"
    proc = run_inprocess(
        "main_percept.py", stage_args("percept", faces, out, 1, "--resume", concept / "checkpoint-last.pth"), capfd
    )
    assert_user_error(proc, str(concept / "checkpoint-last.pth"), "'ConceptNet'", "--resume")
    proc = run_inprocess(
        "main_percept.py", stage_args("percept", faces, out, 1, "--resume", percept / "checkpoint-best.pth"), capfd
    )
    assert_user_error(proc, str(percept / "checkpoint-best.pth"), "weights only", "checkpoint-last.pth")
    proc = run_inprocess(
        "high_confidence.py",
        [
            "--concept_ckpt",
            percept / "checkpoint-best.pth",
            "--data_path",
            faces / "train",
            "--output_dir",
            out,
            "--device",
            "cpu",
        ],
        capfd,
    )
    assert_user_error(proc, str(percept / "checkpoint-best.pth"), "not a stage-1")
    assert_no_output(out)


# --------------------------------------------------------------------------- divergence
def test_non_finite_loss_stops_with_epoch_and_step(faces, tmp_path, capfd):
    out = tmp_path / "nan"
    proc = run_inprocess("main_percept.py", stage_args("percept", faces, out, 2, "--lr", "1e38"), capfd)
    assert_user_error(proc, "epoch 0, step")
    assert not (out / "checkpoint-last.pth").exists()  # never overwritten by a diverged state


# --------------------------------------------------------------------------- hostile files
class Payload:
    def __init__(self, sentinel):
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch.load's note on the payload's format
def test_payload_checkpoint_is_refused_without_running(faces, tmp_path, capfd):
    sentinel = tmp_path / "PWNED"
    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps({"model": Payload(sentinel)}))
    out = tmp_path / "out"
    proc = run_inprocess("main_percept.py", stage_args("percept", faces, out, 1, "--resume", evil), capfd)
    assert_user_error(proc, "evil.pth", "refused")
    proc = run_script(
        "high_confidence.py",
        ["--concept_ckpt", evil, "--data_path", faces / "train", "--output_dir", tmp_path / "conf", "--device", "cpu"],
        env=ONE_THREAD,
    )  # a real process
    assert_user_error(proc, "evil.pth", "refused")
    assert not sentinel.exists()
    assert_no_output(out)
    assert_no_output(tmp_path / "conf")


def test_payload_pretrained_weights_are_refused_without_running(faces, tmp_path, capfd):
    """A VGGFace2 pickle and an MS-Celeb checkpoint that would run ``touch`` when unpickled naively."""
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(Payload(control)))  # the payload works when loaded the unsafe way
    assert control.exists()
    sentinel = tmp_path / "PWNED"
    pkl = tmp_path / "resnet50_ft_weight.pkl"
    pkl.write_bytes(pickle.dumps({"conv1.weight": Payload(sentinel)}, protocol=2))
    pth = tmp_path / "resnet18_msceleb.pth"
    torch.save({"state_dict": {"conv1.weight": Payload(sentinel)}}, pth)
    out = tmp_path / "out"
    proc = run_inprocess("main_concept.py", stage_args("concept", faces, out, 1, "--pretrained", pkl), capfd)
    assert_user_error(proc, str(pkl), "refuses", "posix.system")
    proc = run_inprocess("main_percept.py", stage_args("percept", faces, out, 1, "--pretrained", pth), capfd)
    assert_user_error(proc, str(pth), "refused")
    assert not sentinel.exists()
    assert_no_output(out)


def test_benchmark_stand_ins_fine_tune_only_the_resnet50_on_expression(tmp_path, monkeypatch):
    """benchmarks/ablation.py --expression_epochs N [--expression_identity_batch B]: the ResNet-50 stand-in with the
    expression fine-tuning, the ResNet-18 identity-only; without it, one call for both, as before."""
    from benchmarks import common

    calls = []
    monkeypatch.setattr(
        common.subprocess, "run", lambda cmd, **kwargs: calls.append(cmd[2:]) or subprocess.CompletedProcess(cmd, 0)
    )
    out = str(tmp_path / "pre")
    weights = common.identity_weights(out, str(tmp_path / "pretrain.log"), expression_epochs=8)
    assert calls == [
        ["--out", out, "--arch", "resnet50", "--expression_epochs", "8"],
        ["--out", out, "--arch", "resnet18"],
    ]
    assert weights == {
        "resnet50": os.path.join(out, "synthetic-identity_resnet50_ft_weight.pkl"),
        "resnet18": os.path.join(out, "synthetic-identity_resnet18_msceleb.pth"),
        "resnet50_identity_only": os.path.join(out, "synthetic-identity-only_resnet50_ft_weight.pkl"),
    }
    calls.clear()
    common.identity_weights(out, expression_epochs=4, expression_identity_batch=32)  # make demo's ResNet-50
    assert calls == [
        ["--out", out, "--arch", "resnet50", "--expression_epochs", "4", "--expression_identity_batch", "32"],
        ["--out", out, "--arch", "resnet18"],
    ]
    calls.clear()
    assert set(common.identity_weights(out)) == {"resnet50", "resnet18"}
    assert calls == [["--out", out]]
