"""A run folder's life (layout: debiaspl.run_folder): create or resume it, train, record the results."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import torch
import yaml

from debiaspl.config import (EXECUTION_KEYS, ExperimentConfig, describe_fields, flatten, load_saved_config,
                             protocol_deviations, replace_dotted, save_config, to_dict)
from debiaspl.config.protocols import NO_PROTOCOL
from debiaspl.data.datasets import check_source_available
from debiaspl.data.prepare import prepare_data
from debiaspl.device import machine_choices, resolve_device, use_bf16
from debiaspl.engine.distributed import Distributed
from debiaspl.engine.guard import NonFiniteWatch
from debiaspl.engine.run_log import NullLog, RunLog
from debiaspl.engine.trainer import Trainer
from debiaspl.errors import UserError, first_line
from debiaspl.files import file_sha256, write_json
from debiaspl.models.depthwise import Float32DepthwiseConv2d
from debiaspl.models.external import read_state_dict
from debiaspl.run_folder import (CHECKPOINT_NAME, CONFIG_NAME, LABEL_FILE_COPY, RESULTS_NAME, RUN_INFO_NAME,
                                 RunFolderLock, load_run_checkpoint, refuse_symlinks, remove_stale_temporaries,
                                 way_back)


# Keys that may differ when a run resumes: those that never change the trained weights, and two
# more: how often and what is evaluated, and the label file (a resumed run uses the run folder's copy
# of the file it started with).
RESUME_SAFE_KEYS = EXECUTION_KEYS | {"eval.interval", "eval.use_ema", "data.label_file"}


def run_folder(config: ExperimentConfig) -> Path:
    """logging.run_dir / logging.run_name; the name is one folder name, so a run never lands elsewhere."""
    name = config.logging.run_name
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise UserError(f"logging.run_name = {name!r}: must be a single folder name (no '/', not '.' or '..'); "
                        f"put the folder it goes in into logging.run_dir")
    return Path(config.logging.run_dir) / name


def finished_results(config: ExperimentConfig) -> dict | None:
    """The run's results.json when it trained to train.steps (with or without its checkpoint), else None."""
    path = run_folder(config) / RESULTS_NAME
    try:
        results = json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None  # unreadable: train_run rewrites it when the run finishes
    return results if isinstance(results, dict) and results.get("step", 0) >= config.train.steps else None


def run_state(config: ExperimentConfig) -> str:
    """'finished', 'stopped at step S of T' or 'not started': what train_run would do with this run."""
    if finished_results(config) is not None:
        return "finished"
    checkpoint_path = run_folder(config) / CHECKPOINT_NAME
    if not checkpoint_path.exists():
        return "not started"
    return f"stopped at step {load_run_checkpoint(checkpoint_path)[0]['step']} of {config.train.steps}"


def preflight(config: ExperimentConfig) -> None:
    """Cheap checks that catch user mistakes before any run of a batch starts training."""
    resolve_device(config.train.device)
    check_source_available(config.data.dataset, config.data.root, config.data.download)
    if saved_state(config) is None and config.model.weights:  # a resume takes its weights from the checkpoint
        read_state_dict(config.model.weights)  # there and a state_dict; whether it fits needs the network


def saved_state(config: ExperimentConfig) -> dict | None:
    """The run folder's checkpoint, after checking that this config may continue (or rerun) it.

    A finished run whose checkpoint was deleted is checked against its saved config.yaml, so that
    changed settings are refused rather than answered with the old results.
    """
    run_dir = run_folder(config)
    finished = finished_results(config) is not None
    if (run_dir / CHECKPOINT_NAME).exists():
        state, saved = load_run_checkpoint(run_dir / CHECKPOINT_NAME)
        check_resumable(saved, config, run_dir, finished)
        return state
    if (run_dir / RESULTS_NAME).is_file() and (run_dir / CONFIG_NAME).is_file():
        check_resumable(load_saved_config(run_dir / CONFIG_NAME), config, run_dir, finished)
    return None


def train_run(config: ExperimentConfig, until_step: int | None = None, varying: frozenset[str] = frozenset()) -> dict:
    """Train into the config's run folder, resuming it when it holds a checkpoint; returns results.

    With `until_step`, pause there (checkpoint written, no results.json) so that a long run can be
    split across jobs of limited length. `varying`: the hyperparameters that differ between the runs
    trained together (`varying_hyperparameters`), which TensorBoard's HParams tab shows first.
    """
    run_dir = run_folder(config)
    distributed = Distributed.from_environment()  # one process, or one of those torchrun started
    lock = RunFolderLock(run_dir) if distributed.is_main else None
    if lock is not None and run_dir.is_dir():  # refuse a second writer before reading anything
        lock.acquire()
    try:
        if run_dir.is_dir():
            refuse_symlinks(run_dir)
        return _train_into(run_dir, config, until_step, distributed, lock, varying)
    finally:
        if lock is not None:
            lock.release()


def _train_into(run_dir: Path, config: ExperimentConfig, until_step: int | None, distributed: Distributed,
                lock: RunFolderLock | None, varying: frozenset[str]) -> dict:
    say = print if distributed.is_main else _silent
    state = saved_state(config)
    finished = finished_results(config)
    if finished is not None:  # its checkpoint may have been deleted to save space: never train it again
        say(f"{run_dir}: already finished at step {finished['step']}; results in {run_dir / RESULTS_NAME}")
        return finished
    if state is not None:
        say(f"{run_dir}: resuming from step {state['step']} of {config.train.steps}")
    label_copy = run_dir / LABEL_FILE_COPY
    if state is not None and config.data.label_file and label_copy.is_file():
        # resume on the labels the run started with, even if the file has been edited since
        config = replace_dotted(config, "data.label_file", str(label_copy))
    device = resolve_device(config.train.device)
    if distributed.enabled and device.type == "cuda":
        device = distributed.cuda_device()
        torch.cuda.set_device(device)
    distributed.start(device.type)
    if config.train.deterministic:
        _use_deterministic_kernels()
    data = prepare_data(config.data)
    deviations = protocol_deviations(config)
    if config.protocol != NO_PROTOCOL:
        say(f"protocol {config.protocol}" + (", except " + ", ".join(
            f"{key} = {theirs} ({config.protocol}: {ours})" for key, (ours, theirs) in deviations.items())
            if deviations else ""))
    # A refused resume (a damaged or mismatched checkpoint) must leave the folder as it was: load the
    # state before anything is written.
    # a resumed run takes its weights from the checkpoint: model.weights need not be there any more
    trainer = Trainer(config, data, device, distributed=distributed, start_weights=state is None)
    if state is not None:
        restore(trainer, state, run_dir / CHECKPOINT_NAME)
    if distributed.is_main:
        try:  # the folder is made only once the data loaded, so a mistake there leaves nothing behind
            run_dir.mkdir(parents=True, exist_ok=True)
            locked_late = lock is not None and not lock.held  # the folder did not exist when the run began
            if locked_late:
                lock.acquire()
            if locked_late and (run_dir / CONFIG_NAME).exists():
                raise UserError(f"another process started {run_dir} while this one loaded its data; "
                                f"run the same command again to resume it")
            remove_stale_temporaries(run_dir)  # what a writer killed mid-checkpoint left
            save_config(config, run_dir / CONFIG_NAME)
            if config.data.label_file and state is None:
                shutil.copyfile(config.data.label_file, label_copy)
        except OSError as exc:
            raise UserError(f"cannot write the run folder {run_dir} (logging.run_dir / logging.run_name): {exc}") from None
        write_json(run_dir / RUN_INFO_NAME, {**data.summary(), "device": str(device),
                                             "processes": distributed.world_size,
                                             "distributed_backend": (distributed.backend(device.type)
                                                                     if distributed.enabled else None),
                                             "bf16_autocast": use_bf16(config.train.precision, device),
                                             # computed in fp32 under CPU autocast (models/depthwise.py)
                                             "fp32_depthwise_convs": sum(isinstance(module, Float32DepthwiseConv2d)
                                                                         for module in trainer.model.modules()),
                                             "model_weights": weights_record(config, state, run_dir),
                                             "machine": machine_choices(config.train.precision,
                                                                        config.data.augment_on, device),
                                             "protocol": config.protocol,
                                             "protocol_deviations": {key: {"protocol": ours, "run": theirs}
                                                                     for key, (ours, theirs) in deviations.items()}})
    say(f"labeled {data.labeled_counts} ({sum(data.labeled_counts)}), unlabeled {data.unlabeled_counts} "
        f"({sum(data.unlabeled_counts)}), test {len(data.test.labels)}"
        + (f"; {distributed.world_size} processes" if distributed.enabled else ""))
    if data.teacher_summary:
        teacher = data.teacher_summary
        say(f"teacher {config.data.teacher_logits}: labels the labeled set with accuracy {teacher['labeled_accuracy']:.4f}; "
            f"on the unlabeled set accuracy {teacher['unlabeled_accuracy']:.4f}, class-histogram KL to the truth "
            f"{teacher['unlabeled_kl_to_true']:.4f}, may fill in for {teacher['fill_in_fraction']:.1%}")

    # Also from step 0: a run that died before its first checkpoint leaves logs to drop.
    log = RunLog(run_dir, resume_step=trainer.step) if distributed.is_main else NullLog()
    if state is None:  # a resumed run wrote these at its step 0, which stays
        log.text("config/resolved", "The resolved config, as `config.yaml` in the run folder holds it:\n\n"
                 + _code_block(yaml.safe_dump(to_dict(config), sort_keys=False)))
        log.hparams_start(hyperparameters(config))
        log.text("data/split", _split_table(data.class_names, data.labeled_counts, data.unlabeled_counts))
        if config.protocol != NO_PROTOCOL:
            rows = "".join(f"| {key} | {theirs} | {ours} |\n" for key, (ours, theirs) in deviations.items())
            log.text("config/protocol", f"protocol **{config.protocol}**" + (
                f", except:\n\n| setting | this run | {config.protocol} |\n|---|---|---|\n{rows}" if rows else
                ", with no departures"))
    started = time.perf_counter()
    try:
        metrics = trainer.fit(log, run_dir, until_step)
        if trainer.step >= config.train.steps:  # the HParams table's metrics: the last value of each eval/ scalar
            log.hparams_end(hparam_columns(config), [f"eval/{name}" for name, value in metrics.items()
                                                     if isinstance(value, (int, float))], varying, trainer.step)
    except BaseException:
        log.hparams_failed(trainer.step)
        raise
    finally:
        log.close()
    results = {"step": trainer.step, "algorithm": config.algorithm.name, "run": str(run_dir),
               "class_names": data.class_names, "train_seconds_this_session": time.perf_counter() - started,
               **metrics}
    if trainer.step >= config.train.steps and distributed.is_main:
        write_json(run_dir / RESULTS_NAME, results)
    elif trainer.step < config.train.steps:
        say(f"{run_dir}: paused at step {trainer.step} of {config.train.steps}; run again to continue")
    distributed.barrier()  # nobody reads the folder before rank 0 finished writing it
    distributed.stop()
    return results


def restore(trainer: Trainer, state: dict, checkpoint: Path) -> None:
    """Load a checkpoint into the trainer, or refuse it in one line naming the file (nothing is written)."""
    try:
        trainer.load_state_dict(state)
    except (KeyError, ValueError, TypeError, RuntimeError, AttributeError) as exc:
        raise UserError(f"cannot resume from {checkpoint}: it does not fit this run ({first_line(exc)}); "
                        f"{way_back(checkpoint)}") from None
    loaded = {**{f"model.{name}": value for name, value in state["model"].items()},
              **{f"algorithm.{name}": value for name, value in state["algorithm"].items()}}
    NonFiniteWatch.check_tensors(loaded, trainer.step, f"{checkpoint} holds it, so the run cannot resume from it; "
                                 f"{way_back(checkpoint)}")
    trainer.last_checkpoint_step = trainer.step


def weights_record(config: ExperimentConfig, state: dict | None, run_dir: Path) -> dict | None:
    """The file the run's weights started from (model.weights): absolute path, size and SHA-256, so a
    result can be traced to it. A resume keeps what the start recorded, since the file may be gone."""
    if not config.model.weights:
        return None
    if state is not None:
        try:
            return json.loads((run_dir / RUN_INFO_NAME).read_text()).get("model_weights")
        except (OSError, ValueError):
            return None
    path = Path(config.model.weights).resolve()
    return {"path": str(path), "bytes": path.stat().st_size, "sha256": file_sha256(path)}


def _silent(*args, **kwargs) -> None:
    """print() for the processes that are not rank 0."""


def _use_deterministic_kernels() -> None:
    # cuBLAS needs this workspace setting before its first call to be deterministic.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


def check_resumable(saved: ExperimentConfig, current: ExperimentConfig, run_dir: Path, finished: bool = False) -> None:
    """Refuse to continue a run under settings that would change what it trains; for a finished run,
    whose results are answered as they are, also under another evaluation or label file."""
    old, new = flatten(to_dict(saved)), flatten(to_dict(current))
    allowed = EXECUTION_KEYS if finished else RESUME_SAFE_KEYS
    blocking = [f"{key}: {old.get(key)!r} -> {new.get(key)!r}" for key in sorted(old.keys() | new.keys())
                if old.get(key) != new.get(key) and key not in allowed]
    if blocking:
        what, way = (("a finished run", ", and its results are those of its own;") if finished else
                     ("a run", "; resume it with the same settings, or"))
        raise UserError(f"{run_dir} holds {what} with other settings ({', '.join(blocking)}){way} start a new "
                        f"run with --set logging.run_name=NEW_NAME")


def hyperparameters(config: ExperimentConfig) -> dict:
    """The config as TensorBoard's HParams tab lists it: dotted keys of numbers, strings and bools, the hooks'
    names as one string; not the run folder's name and place, which name the run already."""
    flat = flatten(to_dict(config))
    flat["hooks"] = ",".join(hook.name for hook in config.hooks) or "none"
    return {key: value for key, value in flat.items() if key not in _RUN_IDENTITY_KEYS}


def hparam_columns(config: ExperimentConfig) -> dict:
    """Every key any run may have (each algorithm part's options too), so that every run's HParams
    experiment has the same columns: this run's values over the defaults (values give the types)."""
    columns = {key: default for key, _, default, _ in describe_fields() if key not in _RUN_IDENTITY_KEYS}
    return {**columns, **hyperparameters(config)}


def varying_hyperparameters(configs: list[ExperimentConfig]) -> frozenset[str]:
    """The hyperparameters whose values differ between these runs, or that only some of them have."""
    values = [hyperparameters(config) for config in configs]
    keys = set().union(*values)
    return frozenset(key for key in keys if len({repr(v.get(key, _ABSENT)) for v in values}) > 1)


_RUN_IDENTITY_KEYS = frozenset({"logging.run_dir", "logging.run_name"})
_ABSENT = object()


def _code_block(text: str) -> str:
    """Markdown (what TensorBoard's Text tab renders) showing the text as it is: indented as code."""
    return "".join(f"    {line}\n" for line in text.splitlines())


def _split_table(class_names: list[str], labeled: list[int], unlabeled: list[int]) -> str:
    rows = [f"| {name} | {n_lb} | {n_ulb} |" for name, n_lb, n_ulb in zip(class_names, labeled, unlabeled)]
    return "\n".join(["| class | labeled | unlabeled |", "|---|---|---|", *rows,
                      f"| **total** | {sum(labeled)} | {sum(unlabeled)} |"])
