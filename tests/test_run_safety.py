"""What a run folder guarantees: damaged checkpoints refused, refused resumes leave it as it was,
divergence stops the run before it overwrites anything good, one writer at a time, no leftovers."""

import hashlib
import subprocess
import sys

import pytest
from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader
from tensorboard.plugins.hparams import api_pb2
from tensorboard.plugins.hparams import metadata as hparams_metadata
import torch

from conftest import run_cli
from debiaspl.config import save_config
from debiaspl.engine.run import run_folder, train_run
from debiaspl.errors import UserError
from debiaspl.run_folder import (CHECKPOINT_NAME, PREVIOUS_CHECKPOINT_NAME, RESULTS_NAME, RunFolderLock,
                                 load_checkpoint, save_checkpoint)


def folder_digest(folder):
    """Every file's relative path and bytes (and every symlink's target): equal digests, equal folders."""
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        digest.update(str(path.relative_to(folder)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def debiaspl_train(*args, own_process=False):
    """`debiaspl train ARGS`, in this process unless the test needs another process (a second writer)."""
    if own_process:
        return subprocess.run([sys.executable, "-m", "debiaspl", "train", *map(str, args)], capture_output=True, text=True)
    return run_cli("train", *args)


def test_each_checkpoint_keeps_the_one_before(tiny):
    config = tiny(logging={"checkpoint_interval": 2})
    train_run(config)
    run_dir = run_folder(config)
    assert load_checkpoint(run_dir / CHECKPOINT_NAME)["step"] == 6
    assert load_checkpoint(run_dir / PREVIOUS_CHECKPOINT_NAME)["step"] == 4


def test_flipped_bytes_inside_a_tensor_are_refused_naming_the_file(tiny):
    config = tiny()
    train_run(config, until_step=3)
    path = run_folder(config) / CHECKPOINT_NAME
    weight = load_checkpoint(path)["model"]["classifier.weight"]
    raw = bytearray(path.read_bytes())
    start = raw.find(weight.numpy().tobytes()[:64])
    assert start > 0
    raw[start:start + 64] = bytes(b ^ 0xFF for b in raw[start:start + 64])
    path.write_bytes(bytes(raw))
    with pytest.raises(UserError, match=r"is damaged: 1 tensor\(s\) do not match .*model.classifier.weight"):
        load_checkpoint(path)
    with pytest.raises(UserError, match="damaged"):
        train_run(config)


def test_the_message_points_to_the_previous_checkpoint(tiny):
    config = tiny(logging={"checkpoint_interval": 2})
    train_run(config, until_step=4)
    run_dir = run_folder(config)
    (run_dir / CHECKPOINT_NAME).write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match=f"{PREVIOUS_CHECKPOINT_NAME}: move it over"):
        train_run(config)


@pytest.mark.parametrize("damage", ["step_not_a_number", "weight_of_another_shape", "nan_in_q_hat", "nan_in_a_weight"])
def test_a_refused_resume_leaves_the_run_folder_as_it_was(tiny, tmp_path, damage):
    config = tiny()
    train_run(config, until_step=3)
    run_dir = run_folder(config)
    state = load_checkpoint(run_dir / CHECKPOINT_NAME)
    if damage == "step_not_a_number":
        state["step"] = "ten"
    elif damage == "weight_of_another_shape":
        state["model"]["classifier.weight"] = torch.zeros(3, 3)
    elif damage == "nan_in_q_hat":
        state["algorithm"]["class_marginal"][0] = float("nan")
    else:
        state["model"]["classifier.weight"][0, 0] = float("nan")
    save_checkpoint(state, run_dir / CHECKPOINT_NAME)
    before = folder_digest(run_dir)
    proc = debiaspl_train("--resume", run_dir)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("debiaspl: error: ") and str(run_dir / CHECKPOINT_NAME) in lines[0]
    assert folder_digest(run_dir) == before


def test_a_diverging_run_stops_keeps_its_last_good_checkpoint_and_writes_no_results(tiny):
    config = tiny(logging={"checkpoint_interval": 2})
    train_run(config, until_step=2)
    run_dir = run_folder(config)
    state = load_checkpoint(run_dir / CHECKPOINT_NAME)
    state["model"]["classifier.weight"].fill_(3e38)  # finite, but the logits overflow: the loss is not
    save_checkpoint(state, run_dir / CHECKPOINT_NAME)
    saved = (run_dir / CHECKPOINT_NAME).read_bytes()
    with pytest.raises(UserError, match=r"diverged: the loss was not finite at step 3 .*; the last good "
                                        r"checkpoint \(step 2\) is kept; no results"):
        train_run(config)
    assert (run_dir / CHECKPOINT_NAME).read_bytes() == saved
    assert not (run_dir / RESULTS_NAME).exists()
    # TensorBoard's HParams tab lists the run as failed, not as 'Unknown'
    ends = [hparams_metadata.parse_session_end_info_plugin_data(value.metadata.plugin_data.content)
            for path in run_dir.glob("events.out.tfevents.*") for event in LegacyEventFileLoader(str(path)).Load()
            for value in event.summary.value if value.tag == hparams_metadata.SESSION_END_INFO_TAG]
    assert [end.status for end in ends] == [api_pb2.STATUS_FAILURE]


@pytest.mark.parametrize("section", [{"optim": {"lr": 1e6}}, {"algorithm": {"unlabeled_weight": 1e30}}],
                         ids=["lr_1e6", "unlabeled_weight_1e30"])
def test_a_huge_learning_rate_or_loss_weight_stops_with_exit_2(tiny, tmp_path, section):
    config = tiny(train={"steps": 20}, **section)
    path = tmp_path / "huge_lr.yaml"
    save_config(config, path)
    proc = debiaspl_train(path)
    assert proc.returncode == 2 and "training diverged" in proc.stderr, proc.stderr
    run_dir = run_folder(config)
    assert not (run_dir / RESULTS_NAME).exists()
    if (run_dir / CHECKPOINT_NAME).exists():  # what was saved was saved before the divergence
        state = load_checkpoint(run_dir / CHECKPOINT_NAME)
        assert all(torch.isfinite(value).all() for value in state["model"].values() if value.is_floating_point())


def test_a_second_writer_is_refused_while_the_first_holds_the_folder(tiny, tmp_path):
    config = tiny()
    train_run(config, until_step=3)
    run_dir = run_folder(config)
    path = tmp_path / "tiny.yaml"
    save_config(config, path)
    lock = RunFolderLock(run_dir)
    lock.acquire()  # as a training process would
    try:
        before = folder_digest(run_dir)
        proc = debiaspl_train(path, own_process=True)
        assert proc.returncode == 2 and "is being written by process" in proc.stderr, proc.stderr
        assert folder_digest(run_dir) == before
    finally:
        lock.release()
    assert debiaspl_train(path).returncode == 0


def test_a_lock_left_by_a_killed_run_is_taken_over(tiny):
    config = tiny()
    train_run(config, until_step=3)
    run_dir = run_folder(config)
    RunFolderLock(run_dir).path.write_text("process 999999 on a machine that died\n")  # file there, lock not held
    assert train_run(config)["step"] == 6
    assert not RunFolderLock(run_dir).path.exists()


def test_resume_removes_the_temporary_files_a_kill_left(tiny):
    config = tiny()
    train_run(config, until_step=3)
    run_dir = run_folder(config)
    leftover = run_dir / f".{CHECKPOINT_NAME}.k1ll3d.tmp"
    leftover.write_bytes(b"\0" * 1024)
    train_run(config)
    assert not leftover.exists()


@pytest.mark.parametrize("planted", ["config.yaml", "label_file.csv", "eval"])
def test_a_planted_symlink_in_a_run_folder_is_refused(tiny, tmp_path, planted):
    config = tiny()
    train_run(config, until_step=3)
    run_dir = run_folder(config)
    outside = tmp_path / "outside"
    outside.mkdir()
    target = outside / planted
    if planted == "eval":
        target.mkdir()
    else:
        if (run_dir / planted).exists():
            target.write_bytes((run_dir / planted).read_bytes())
            (run_dir / planted).unlink()
        else:
            target.write_text("sample,label\n")
    (run_dir / planted).symlink_to(target, target_is_directory=planted == "eval")
    before = folder_digest(outside)
    with pytest.raises(UserError, match=f"{planted} is a symbolic link"):
        train_run(config)
    proc = subprocess.run([sys.executable, "-m", "debiaspl", "eval", str(run_dir)], capture_output=True, text=True)
    assert proc.returncode == 2 and "is a symbolic link" in proc.stderr, proc.stderr
    assert folder_digest(outside) == before


@pytest.mark.parametrize("name", ["../escaped", "a/b", "..", "."])
def test_a_run_name_cannot_leave_the_run_dir(tiny, name):
    with pytest.raises(UserError, match="logging.run_name .* single folder name"):
        train_run(tiny(logging={"run_name": name}))


def test_after_a_kill_the_resumed_logs_hold_each_step_once(tiny):
    """What a run killed after logging step 4 but before its next checkpoint (step 6) left past its
    checkpoint at step 3 is dropped on resume: TensorBoard's purge step, metrics.jsonl rewritten."""
    import json

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    config = tiny()
    train_run(config, until_step=3)
    run_dir = run_folder(config)
    killed = SummaryWriter(str(run_dir))  # the killed process's last writes, never checkpointed
    killed.add_scalar("train/loss", 1234.0, 4)
    killed.close()
    with open(run_dir / "metrics.jsonl", "a") as metrics:
        metrics.write(json.dumps({"step": 4, "train/loss": 1234.0}) + "\n" + '{"step": 5, "train/lo')  # cut mid-line
    train_run(config)
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    pairs = [(line["step"], key) for line in lines for key in line if key != "step"]  # eval and train share a step
    assert len(pairs) == len(set(pairs)) and [line["step"] for line in lines] == sorted(line["step"] for line in lines)
    assert 1234.0 not in [line.get("train/loss") for line in lines]
    events = EventAccumulator(str(run_dir)).Reload().Scalars("train/loss")
    assert [event.step for event in events] == sorted({event.step for event in events})
    assert 1234.0 not in [event.value for event in events]


def test_a_full_disk_names_the_file_and_keeps_the_checkpoint_there(tiny, monkeypatch):
    import errno

    config = tiny()
    train_run(config, until_step=3)
    path = run_folder(config) / CHECKPOINT_NAME
    saved = path.read_bytes()

    def disk_full(state, handle):
        handle.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(UserError, match=rf"cannot write checkpoint {path}: No space left on device \(errno 28\)"):
        train_run(config)
    assert path.read_bytes() == saved and not list(path.parent.glob(".*.tmp"))


def test_a_run_killed_before_its_first_checkpoint_resumes_from_step_0(tiny):
    config = tiny()
    run_dir = run_folder(config)
    run_dir.mkdir(parents=True)
    save_config(config, run_dir / "config.yaml")  # all a run killed while loading leaves
    proc = debiaspl_train("--resume", run_dir)
    assert proc.returncode == 0, proc.stderr
    assert load_checkpoint(run_dir / CHECKPOINT_NAME)["step"] == 6 and (run_dir / RESULTS_NAME).is_file()


def test_an_os_error_while_writing_is_one_line_naming_the_file(tiny, tmp_path):
    # held before issue 14 for the run folder itself; the CLI now turns any other OSError into one line too
    config = tiny(logging={"run_dir": str(tmp_path / "a_file" / "runs")})
    (tmp_path / "a_file").write_text("not a folder")
    path = tmp_path / "tiny.yaml"
    save_config(config, path)
    proc = debiaspl_train(path)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "a_file" in proc.stderr and "errno 20" in proc.stderr.lower()
