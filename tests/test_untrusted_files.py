"""No code from a file we read ever runs: a pickle payload planted in each place files are read.

Each payload would create `marker` if it ran. The readers: checkpoints and snapshots (torch.load
with weights_only), experiment YAML and a run's config.yaml (safe loading), teacher logits (.npz)
and the logits of debias-logits (.npy), both with allow_pickle=False. Label files are CSV text,
parsed, never unpickled.
"""

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from debiaspl.analysis.load_run import load_snapshot
from debiaspl.engine.run import run_folder, train_run
from debiaspl.errors import UserError
from debiaspl.run_folder import CHECKPOINT_NAME, CONFIG_NAME, load_checkpoint, snapshot_path


class Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def debiaspl(*args):
    return subprocess.run([sys.executable, "-m", "debiaspl", *map(str, args)], capture_output=True, text=True)


def test_the_payload_works_when_unpickled(tmp_path):
    marker = tmp_path / "marker"  # so the tests below would notice it running
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.exists()


def test_a_checkpoint_with_a_payload_is_refused_unrun(tiny, tmp_path):
    config = tiny()
    train_run(config, until_step=3)
    run_dir, marker = run_folder(config), tmp_path / "marker"
    torch.save({"step": 3, "model": Payload(marker)}, run_dir / CHECKPOINT_NAME)
    for proc in (debiaspl("train", "--resume", run_dir), debiaspl("eval", run_dir)):
        assert proc.returncode == 2 and "cannot read checkpoint" in proc.stderr, proc.stderr
    assert not marker.exists()


def test_a_snapshot_with_a_payload_is_refused_unrun(tmp_path):
    marker, path = tmp_path / "marker", snapshot_path(tmp_path, 10)
    path.parent.mkdir()
    torch.save({"step": 10, "lr": 0.1, "model": Payload(marker), "algorithm": {}}, path)
    with pytest.raises(UserError, match="cannot read checkpoint"):
        load_snapshot(path)
    with pytest.raises(UserError):
        load_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize("where", ["experiment", "run_config"])
def test_a_yaml_python_tag_is_refused_unrun(tiny, tmp_path, where):
    marker = tmp_path / "marker"
    tagged = f"train:\n  seed: !!python/object/apply:os.system ['touch {marker}']\n"
    if where == "experiment":
        path = tmp_path / "tagged.yaml"
        path.write_text(tagged)
        proc = debiaspl("train", path)
    else:
        config = tiny()
        train_run(config, until_step=3)
        run_dir = run_folder(config)
        (run_dir / CONFIG_NAME).write_text(tagged)
        proc = debiaspl("train", "--resume", run_dir)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not marker.exists()


def test_teacher_logits_with_a_pickled_array_are_refused_unrun(tiny, tmp_path):
    marker, path = tmp_path / "marker", tmp_path / "teacher.npz"
    payload = np.empty(1, dtype=object)
    payload[0] = Payload(marker)
    np.savez(path, sample_ids=payload, logits=payload)
    with pytest.raises(UserError, match="teacher.npz"):
        train_run(tiny(data={"teacher_logits": str(path)}))
    assert not marker.exists()


def test_debias_logits_with_a_pickled_array_is_refused_unrun(tmp_path):
    marker, path = tmp_path / "marker", tmp_path / "logits.npy"
    payload = np.empty((2, 2), dtype=object)
    payload[0, 0] = Payload(marker)
    np.save(path, payload, allow_pickle=True)
    proc = debiaspl("debias-logits", path, "--out", tmp_path / "out")
    assert proc.returncode == 2 and "logits.npy" in proc.stderr, proc.stderr
    assert not marker.exists()
