import json
import subprocess
import sys

import pytest
import torch
import yaml

from debiaspl.config import save_config
from debiaspl.run_folder import load_checkpoint
from debiaspl.engine.run import run_folder, train_run
from debiaspl.errors import UserError


def final_state(config):
    return load_checkpoint(run_folder(config) / "checkpoint.pt")


def assert_same_tensors(a, b, path="state"):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            assert_same_tensors(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tensors(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


def metric_lines(config):
    lines = [json.loads(line) for line in (run_folder(config) / "metrics.jsonl").read_text().splitlines()]
    for line in lines:
        line.pop("train/steps_per_second", None)
    return lines


def test_resume_equals_uninterrupted(tiny):
    # Dropout draws from the global RNG and a background worker loads batches; the pause at step 3
    # falls inside a logging interval (every 2 steps), so the interval sums must survive too.
    options = {"model": {"dropout": 0.3}, "data": {"num_workers": 1}}
    straight = tiny(logging={"run_name": "straight"}, **options)
    train_run(straight)
    paused = tiny(logging={"run_name": "paused"}, **options)
    partial = train_run(paused, until_step=3)
    assert partial["step"] == 3 and not (run_folder(paused) / "results.json").exists()
    assert final_state(paused)["step"] == 3
    # a crash mid-write after the checkpoint leaves a half line that resume must drop
    with open(run_folder(paused) / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 4, "train/lo')
    train_run(paused)
    a, b = final_state(straight), final_state(paused)
    for key in ("model", "ema", "optimizer", "scheduler", "algorithm", "step"):
        assert_same_tensors(a[key], b[key], key)
    # the marginal really moved, so comparing it means something
    marginal = a["algorithm"]["class_marginal"]
    assert not torch.allclose(marginal, torch.full_like(marginal, 0.1))
    assert metric_lines(straight) == metric_lines(paused)


def test_tau_zero_run_equals_fixmatch_run(tiny):
    # threshold 0: every pseudo-label counts, so the unlabeled loss shapes the weights from step 1
    fixmatch = tiny(algorithm={"name": "fixmatch", "fixmatch": {"threshold": 0.0}}, logging={"run_name": "fixmatch"})
    debiaspl = tiny(algorithm={"name": "fixmatch+debiaspl", "debiaspl": {"tau": 0.0}, "fixmatch": {"threshold": 0.0}},
                    logging={"run_name": "debiaspl0"})
    debiased = tiny(algorithm={"name": "fixmatch+debiaspl", "debiaspl": {"tau": 0.4}, "fixmatch": {"threshold": 0.0}},
                    logging={"run_name": "debiaspl"})
    for config in (fixmatch, debiaspl, debiased):
        train_run(config)
    a, b, c = final_state(fixmatch), final_state(debiaspl), final_state(debiased)
    assert_same_tensors(a["model"], b["model"])
    assert_same_tensors(a["algorithm"], b["algorithm"])
    assert not torch.equal(a["model"]["classifier.weight"], c["model"]["classifier.weight"])


def test_resume_refuses_changed_settings(tiny):
    train_run(tiny(train={"steps": 3}))
    with pytest.raises(UserError, match="algorithm.debiaspl.tau: 0.4 -> 0.2"):
        train_run(tiny(train={"steps": 3}, algorithm={"debiaspl": {"tau": 0.2}}))
    # reporting-only settings may change
    train_run(tiny(train={"steps": 3}, logging={"log_interval": 1, "progress_bar": False}))


def test_broken_checkpoints_are_user_errors(tiny):
    config = tiny(train={"steps": 3})
    folder = run_folder(config)
    folder.mkdir(parents=True)
    (folder / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="corrupt or not a checkpoint; move it away"):
        train_run(config)
    torch.save({"a": 1}, folder / "checkpoint.pt")
    with pytest.raises(UserError, match="not a debiaspl checkpoint of format 2"):
        train_run(config)


def test_data_mistakes_stop_before_a_run_folder_exists(tiny, tmp_path):
    config = tiny(data={"dataset": "imagefolder", "root": str(tmp_path / "nowhere")})
    with pytest.raises(UserError, match="nowhere/train does not exist"):
        train_run(config)
    assert not run_folder(config).exists()


def test_cli_end_to_end(tiny, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    config = tiny()
    path = tmp_path / "tiny.yaml"
    save_config(config, path)
    command = [sys.executable, "-m", "debiaspl", "train", str(path)]
    proc = subprocess.run(command, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    run_dir = run_folder(config)
    for name in ("config.yaml", "run_info.json", "metrics.jsonl", "checkpoint.pt", "results.json"):
        assert (run_dir / name).is_file(), name
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["labeled_counts"] == [20, 16, 13, 11, 9, 8, 6, 5, 4, 4]
    machine = info["machine"]  # what the machine-dependent settings resolved to, and why
    assert machine["cpu"] and machine["torch_threads"] >= 1 and machine["augment_on_device"] is False
    from debiaspl.device import bf16_is_fast
    assert machine["bf16_autocast"] == bf16_is_fast(torch.device("cpu")) == info["bf16_autocast"]
    events = EventAccumulator(str(run_dir)).Reload()
    tags = set(events.Tags()["scalars"])
    assert "data/split/text_summary" in events.Tags()["tensors"]
    for tag in ("train/loss", "train/loss_sup", "train/loss_unsup", "train/lr", "pseudo/mask_rate", "pseudo/acc",
                "pseudo/class_marginal/0", "pseudo/class_marginal/9", "eval/top1", "eval/balanced_acc",
                "eval/acc_many", "eval/acc_few", "eval/class_acc/3", "eval/pseudo_acc", "eval/pseudo_mask_rate"):
        assert tag in tags, tag
    assert [e.step for e in events.Scalars("eval/top1")] == [3, 6]
    state = load_checkpoint(run_dir / "checkpoint.pt")
    assert state["step"] == 6
    results = json.loads((run_dir / "results.json").read_text())
    assert 0 <= results["top1"] <= 1 and results["step"] == 6
    again = subprocess.run(command, capture_output=True, text=True)
    assert again.returncode == 0 and "already finished" in again.stdout
    # --resume from inside the run folder finds the run by its real name
    here = subprocess.run([sys.executable, "-m", "debiaspl", "train", "--resume", "."], capture_output=True,
                          text=True, cwd=run_dir)
    assert here.returncode == 0 and "already finished" in here.stdout, here.stderr
    not_a_run = subprocess.run([sys.executable, "-m", "debiaspl", "train", "--resume", str(tmp_path)],
                               capture_output=True, text=True)
    assert not_a_run.returncode == 2 and "is not a run folder (no config.yaml in it)" in not_a_run.stderr


def test_augmenting_on_the_device_gives_the_same_run(tiny):
    in_loader = tiny(data={"augment_on": "loader"}, logging={"run_name": "loader"})
    on_device = tiny(data={"augment_on": "device"}, logging={"run_name": "device"})
    train_run(in_loader)
    train_run(on_device)
    assert_same_tensors(final_state(in_loader)["model"], final_state(on_device)["model"])


@pytest.mark.parametrize("train", [{"precision": "bf16"}, {"precision": "fp32", "channels_last": False},
                                   {"weak_forward": "separate"}])
def test_speed_options_train(tiny, train):
    config = tiny(train={"steps": 3, **train}, eval={"interval": 3})
    results = train_run(config)
    assert results["step"] == 3 and 0 <= results["top1"] <= 1
    state = final_state(config)
    assert state["algorithm"]["class_marginal"].dtype == torch.float32
    assert torch.isfinite(state["model"]["classifier.weight"]).all()


def test_precision_auto_takes_bf16_only_where_the_hardware_has_it():
    from debiaspl.device import bf16_is_fast, use_bf16
    cpu = torch.device("cpu")
    # The flags alone decide here: kernels are pinned, since this machine's own level (AVX2 on a
    # Zen 3) would otherwise answer no for every set of flags.
    def fast(flags, kernels="AVX512"):
        return bf16_is_fast(cpu, frozenset(flags), kernels=kernels)
    assert fast({"avx512f", "avx512_bf16", "amx_tile", "amx_bf16"})
    assert not fast({"avx512f", "avx512bw"})  # bf16 only emulated: slower than fp32
    assert not fast({"GenuineIntel", "avx512f", "avx512_bf16"})  # measured slower without AMX
    epyc = {"AuthenticAMD", "avx512f", "avx512_bf16"}
    assert fast(epyc)  # an EPYC: measured 1.7-2.3x faster
    assert not fast({"AuthenticAMD", "avx2", "fma"})  # Zen 3: no bf16 instructions, whatever the kernels
    assert not fast(epyc, kernels="AVX2")  # kernels capped to AVX2: bf16 emulated, 13x slower
    assert use_bf16("bf16", cpu) and not use_bf16("fp32", cpu)


def test_a_format_1_checkpoint_resumes_to_the_same_run(tiny):
    # Checkpoints written before algorithms had their own state and config sections kept q_hat as
    # "class_marginal" and a flat algorithm section (name debiaspl, threshold, tau): they resume.
    straight = tiny(logging={"run_name": "straight"})
    old = tiny(logging={"run_name": "old"})
    train_run(straight)
    train_run(old, until_step=3)
    path = run_folder(old) / "checkpoint.pt"
    state = load_checkpoint(path)
    algorithm = state["config"]["algorithm"]
    state.update(format=1, class_marginal=state.pop("algorithm")["class_marginal"])
    state["config"]["algorithm"] = {"name": "debiaspl", "threshold": algorithm["fixmatch"]["threshold"],
                                    "unlabeled_weight": algorithm["unlabeled_weight"],
                                    "tau": algorithm["debiaspl"]["tau"], "marginal_momentum": algorithm["marginal_momentum"]}
    torch.save(state, path)
    (run_folder(old) / "config.yaml").write_text(yaml.safe_dump(state["config"], sort_keys=False))
    from debiaspl.cli import main
    assert main(["train", "--resume", str(run_folder(old))]) == 0  # reads the old config.yaml
    a, b = final_state(straight), final_state(old)
    assert b["format"] == 2
    for key in ("model", "ema", "optimizer", "algorithm", "step"):
        assert_same_tensors(a[key], b[key], key)


def test_pseudo_labels_can_be_measured_on_a_fixed_sample(tiny, monkeypatch):
    from debiaspl.data.image_set import ImageSet
    from debiaspl.engine.evaluate import pseudo_label_sample

    unlabeled = ImageSet(torch.zeros(50, 1, 4, 4, dtype=torch.uint8), torch.arange(50), [str(i) for i in range(50)])
    sample = pseudo_label_sample(unlabeled, 10)
    assert torch.equal(sample.labels, pseudo_label_sample(unlabeled, 10).labels)  # the same at every evaluation
    assert len(set(sample.labels.tolist())) == 10 and sample.labels.tolist() == sorted(sample.labels.tolist())
    assert sample.sample_ids == [str(i) for i in sample.labels.tolist()]
    assert pseudo_label_sample(unlabeled, 0) is unlabeled and pseudo_label_sample(unlabeled, 50) is unlabeled
    from debiaspl.engine import trainer

    measured = []

    def recording(model, images, *args):
        measured.append(images.sample_ids)
        return evaluate_pseudo_labels(model, images, *args)

    evaluate_pseudo_labels = trainer.evaluate_pseudo_labels
    monkeypatch.setattr(trainer, "evaluate_pseudo_labels", recording)
    train_run(tiny(eval={"interval": 3, "pseudo_label_images": 16}))
    assert len(measured) == 2 and measured[0] == measured[1] and len(measured[0]) == 16
    train_run(tiny(eval={"interval": 3}, logging={"run_name": "all"}))
    assert len(measured[2]) > 16  # the default: the whole unlabeled set
