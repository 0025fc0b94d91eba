"""The training loop: FixMatch-style SSL with the step math of the configured algorithm.

`fit` reads top to bottom: batch (copy, augmentation on the device if configured) -> train_step
(forward -> step math -> backward -> optimizer -> scheduler -> EMA) -> state -> hooks -> logging ->
evaluation -> checkpoint. Everything a resumed run needs is in `state_dict`. The loop never asks
which algorithm it runs: it calls the `Algorithm` value the config builds.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from debiaspl.algorithm import AlgorithmState, StepInputs, StepOutput
from debiaspl.config import ExperimentConfig, to_dict
from debiaspl.data.loaders import TrainBatch, UnaugmentedBatch, augment_batch, to_model_input, train_loader
from debiaspl.data.prepare import TrainingData, strong_augmentation
from debiaspl.device import augments_on_device, use_bf16
from debiaspl.engine.checkpoint import capture_rng_state, restore_rng_state
from debiaspl.engine.distributed import Distributed
from debiaspl.engine.evaluate import evaluate_model, evaluate_pseudo_labels, pseudo_label_sample
from debiaspl.engine.guard import NonFiniteWatch
from debiaspl.engine.memory import freed_memory_returned
from debiaspl.engine.monitor import PseudoLabelMonitor
from debiaspl.engine.optim import build_optimizer, build_scheduler
from debiaspl.engine.progress import Progress
from debiaspl.engine.run_log import RunLog
from debiaspl.engine.timing import StepTimer
from debiaspl.hooks import HOOKS, RunContext, StepRecord
from debiaspl.models import build_model, check_takes_images
from debiaspl.models.ema import ModelEMA
from debiaspl.run_folder import CHECKPOINT_FORMAT, CHECKPOINT_NAME, save_checkpoint, snapshot_path


class LogitsAndFeatures(nn.Module):
    """The model's forward that also returns the classifier's input (the penultimate features after
    model.dropout, as this step's classifier saw them: TracIn's last-layer gradient is taken at that
    input), so hooks that need them cost no extra pass. DDP and torch.compile wrap this module."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.model.dropout(self.model.forward_features(x))
        return self.model.classifier(features), features


@dataclass(frozen=True)
class ForwardOutput:
    """What the forward pass(es) of one step produced."""

    logits_lb: torch.Tensor      # [B, C]
    logits_weak: torch.Tensor    # [N, C]
    logits_strong: torch.Tensor  # [N, C]
    features_lb: torch.Tensor    # [B, D] penultimate features
    features_weak: torch.Tensor  # [N, D]


@dataclass(frozen=True)
class TrainedStep:
    """One step as the loop logs it: the forward's outputs, the algorithm's, and the learning rate used."""

    forward: ForwardOutput
    result: StepOutput
    lr: float


def state_on(state: AlgorithmState, device: torch.device | str) -> AlgorithmState:
    return {key: value.to(device) for key, value in state.items()}


class Trainer:
    def __init__(self, config: ExperimentConfig, data: TrainingData, device: torch.device,
                 timer: StepTimer | None = None, distributed: Distributed | None = None, start_weights: bool = True):
        self.config, self.data, self.device = config, data, device
        self.timer = timer or StepTimer(device)
        self.dist = distributed or Distributed()
        self.dist.check_divides("train.batch_size", config.train.batch_size)
        torch.manual_seed(config.train.seed)
        in_channels = data.image_shape[0]
        self.model = build_model(config.model.name, data.num_classes, in_channels, config.model.dropout,
                                 config.model.wrn_variant, weights=config.model.weights if start_weights else "").to(device)
        check_takes_images(self.model, data.image_shape, config.model.name)
        self.memory_format = torch.channels_last if config.train.channels_last else torch.contiguous_format
        self.model.to(memory_format=self.memory_format)
        self.bf16 = use_bf16(config.train.precision, device)
        self.augment_on_device = augments_on_device(config.data.augment_on, device)
        self.strong_augment = strong_augmentation(config.data)
        self.ema = ModelEMA(self.model, config.train.ema_decay, warmup=config.train.ema_warmup,
                            average_buffers=config.train.ema_buffers == "average")
        # wrap and compile after the EMA copy, so the EMA module stays a plain one for evaluation
        if self.dist.enabled and device.type == "cuda":  # per-process BatchNorm statistics would differ
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.forward = LogitsAndFeatures(self.model)
        if self.dist.enabled:
            self.forward = DistributedDataParallel(self.forward, device_ids=[device] if device.type == "cuda" else None)
        if config.train.compile:
            self.forward = torch.compile(self.forward)
        self.optimizer = build_optimizer(self.model, config.optim)
        self.scheduler = build_scheduler(self.optimizer, config.train.steps, config.optim.schedule)
        self.algorithm = config.algorithm.build()
        self.algorithm_state = self.algorithm.initial_state(data.num_classes, len(data.unlabeled.labels), device)
        self.monitor = PseudoLabelMonitor(device)
        self.watch = NonFiniteWatch(device)
        self.pseudo_label_eval_set = pseudo_label_sample(data.unlabeled, config.eval.pseudo_label_images)
        self.last_checkpoint_step: int | None = None  # of the newest checkpoint this run folder holds
        # Hooks run where the files are written; every process takes part in gathering their records.
        self.hooks = [HOOKS[hook.name](hook.options) for hook in config.hooks] if self.dist.is_main else []
        self.gather_records = bool(config.hooks) and self.dist.enabled
        self.step = 0
        self.mean = torch.tensor(data.mean, device=device)
        self.std = torch.tensor(data.std, device=device)
        self.teacher_labels = None if data.unlabeled_teacher_labels is None else data.unlabeled_teacher_labels.to(device)
        self.records_features = any(HOOKS[hook.name].needs_features for hook in config.hooks)

    # -- the loop --------------------------------------------------------------------------------
    def fit(self, log: RunLog, run_dir: Path, until_step: int | None = None) -> dict:
        """Train to train.steps (or pause after `until_step`, checkpointed); returns the last eval metrics."""
        cfg = self.config
        checkpoint_path = run_dir / CHECKPOINT_NAME
        total_steps, monitor, timer = cfg.train.steps, self.monitor, self.timer
        end_step = total_steps if until_step is None else min(until_step, total_steps)
        batches = iter(self.loader(self.step, end_step))
        progress = Progress(total_steps, self.step, end_step, cfg.logging.run_name, bar=cfg.logging.progress_bar,
                            show=self.dist.is_main)
        metrics, interval_start, steps_timed = {}, time.perf_counter(), 0
        context = self._run_context(log, run_dir)
        for hook in self.hooks:
            hook.on_train_start(context)
        self.model.train()
        while self.step < end_step:
            with timer.section("data"):
                batch = self.prepare_batch(*next(batches))
            trained = self.train_step(batch)
            state_before, self.algorithm_state = self.algorithm_state, trained.result.state
            monitor.update(trained.result, batch.y_ulb)
            self.watch.update(self.step, trained.result.loss)
            steps_timed += 1
            progress.advance()
            if self.hooks or self.gather_records:
                with timer.section("hooks"):
                    record = self._step_record(batch, trained, state_before["class_marginal"])
                    for hook in self.hooks:
                        hook.on_step_end(record)

            is_last = self.step == total_steps
            if is_last or self.step == end_step or any(self.step % interval == 0 for interval in (
                    cfg.logging.log_interval, cfg.eval.interval, cfg.logging.checkpoint_interval)):
                self._check_finite()  # before anything is logged, evaluated or saved from this step
            with timer.section("logging"):
                if self.step % cfg.logging.log_interval == 0 or is_last:
                    steps_per_second = steps_timed / max(time.perf_counter() - interval_start, 1e-9)
                    scalars = monitor.flush(self.dist)
                    scalars["train/lr"] = trained.lr
                    scalars["train/steps_per_second"] = steps_per_second
                    scalars.update(self._per_class_scalars())
                    log.scalars(self.step, scalars)
                    progress.log(self.step, scalars)
                    interval_start, steps_timed = time.perf_counter(), 0
            if self.dist.is_main and (self.step % cfg.eval.interval == 0 or is_last):
                with freed_memory_returned():
                    metrics = self.evaluate()
                    log.scalars(self.step, _eval_scalars(metrics, self.data.class_names))
                    progress.evaluation(self.step, metrics)
                    for hook in self.hooks:
                        hook.on_evaluation(self.step, metrics)
            if not self.dist.is_main:
                continue  # the other processes only train
            if cfg.logging.snapshot_interval and (self.step % cfg.logging.snapshot_interval == 0 or is_last):
                # TracIn sums over these with the learning rate of the step that produced each (Pruthi et al.
                # 2020), as the online influence hook does.
                self._check_finite_state()
                save_checkpoint({"format": CHECKPOINT_FORMAT, "step": self.step, "lr": trained.lr,
                                 "algorithm": state_on(self.algorithm_state, "cpu"), "model": self.model.state_dict()},
                                snapshot_path(run_dir, self.step))
            if self.step % cfg.logging.checkpoint_interval == 0 or self.step == end_step:
                if self.step == end_step:  # hooks write their final summaries into the last checkpoint's state
                    with freed_memory_returned():
                        for hook in self.hooks:
                            hook.on_train_end(self.step)
                self._check_finite_state()
                save_checkpoint(self.state_dict(), checkpoint_path, keep_previous=True)
                self.last_checkpoint_step = self.step
        progress.close()
        if not metrics and self.step == total_steps and self.dist.is_main:  # resumed from the final checkpoint
            metrics = self.evaluate()
        return metrics

    def _kept(self) -> str:
        return (f"the last good checkpoint (step {self.last_checkpoint_step}) is kept"
                if self.last_checkpoint_step is not None else "no checkpoint had been written")

    def _check_finite(self) -> None:
        """Stop every process if any process saw a non-finite loss (one host sync, at the loop's sync points)."""
        if bool(self.dist.sum((self.watch.first_bad_step >= 0).float()) > 0):  # the identity on one process
            if int(self.watch.first_bad_step) < 0:  # another process saw it first
                self.watch.first_bad_step.fill_(self.step)
            self.watch.check(self._kept())

    def _check_finite_state(self) -> None:
        """The weights, the EMA and the algorithm state (q_hat) must be finite before they are saved."""
        tensors = {**{f"model.{name}": value for name, value in self.model.state_dict().items()},
                   **{f"ema.{name}": value for name, value in self.ema.module.state_dict().items()},
                   **{f"algorithm.{name}": value for name, value in self.algorithm_state.items()}}
        NonFiniteWatch.check_tensors(tensors, self.step, self._kept())

    def loader(self, start_step: int, end_step: int):
        """Batches for steps [start_step, end_step), augmented in the workers unless that happens on the device."""
        cfg = self.config
        return train_loader(self.data.labeled, self.data.unlabeled, start_step=start_step, end_step=end_step,
                            num_workers=cfg.data.num_workers, pin_memory=self.device.type == "cuda",
                            batch_size=cfg.train.batch_size, unlabeled_ratio=cfg.train.unlabeled_ratio,
                            seed=cfg.train.seed,
                            strong=None if self.augment_on_device else self.strong_augment)

    def prepare_batch(self, step: int, batch: UnaugmentedBatch | TrainBatch) -> TrainBatch:
        """Copy to the device (asynchronously from pinned memory on CUDA), augmenting there if configured."""
        if not self.augment_on_device:
            batch = batch.map(self.dist.shard)
        batch = batch.map(lambda tensor: tensor.to(self.device, non_blocking=True))
        if self.augment_on_device:  # the global batch, so every process draws what one process would
            batch = augment_batch(batch, step, self.config.train.seed, self.strong_augment).map(self.dist.shard)
        return batch

    def train_step(self, batch: TrainBatch) -> TrainedStep:
        """Forward, step math, backward, optimizer, scheduler, EMA on one batch; returns what the loop logs."""
        timer = self.timer
        with timer.section("forward"), torch.autocast(self.device.type, torch.bfloat16, enabled=self.bf16):
            forward = self._forward(batch)
            teacher_labels = None if self.teacher_labels is None else self.teacher_labels[batch.idx_ulb]
            inputs = StepInputs(forward.logits_lb, batch.y_lb, forward.logits_weak, forward.logits_strong, batch.idx_ulb,
                                teacher_labels)
            # the distributed context gives the step the whole batch's q_hat update and per-sample state
            result = self.algorithm.step(inputs, self.algorithm_state, self.dist)
        with timer.section("backward"):
            self.optimizer.zero_grad(set_to_none=True)
            result.loss.backward()
        with timer.section("optimizer"):
            self.optimizer.step()
            lr = self.scheduler.get_last_lr()[0]  # the rate this step used
            self.scheduler.step()
            self.step += 1
            self.ema.update(self.model, self.step)
        return TrainedStep(forward, result, lr)

    def _forward(self, batch: TrainBatch) -> ForwardOutput:
        num_lb, num_ulb = len(batch.y_lb), len(batch.idx_ulb)
        if self.config.train.weak_forward == "joint":
            # One pass over labeled, weak and strong views, so BatchNorm sees them together as in
            # FixMatch; the weak logits are detached inside the step.
            logits, features = self.forward(self._model_input(batch.x_lb, batch.x_ulb_weak, batch.x_ulb_strong))
            logits_lb, logits_weak, logits_strong = logits.split([num_lb, num_ulb, num_ulb])
            features_lb, features_weak, _ = features.split([num_lb, num_ulb, num_ulb])
        else:
            with torch.no_grad():
                logits_weak, features_weak = self.forward(self._model_input(batch.x_ulb_weak))
            logits, features = self.forward(self._model_input(batch.x_lb, batch.x_ulb_strong))
            logits_lb, logits_strong = logits.split([num_lb, num_ulb])
            features_lb = features[:num_lb]
        return ForwardOutput(logits_lb, logits_weak, logits_strong, features_lb, features_weak)

    def _model_input(self, *images: torch.Tensor) -> torch.Tensor:
        inputs = to_model_input(torch.cat(images) if len(images) > 1 else images[0], self.mean, self.std)
        return inputs.contiguous(memory_format=self.memory_format)

    def evaluate(self) -> dict:
        """Test metrics of the evaluated model, plus the quality of its unlabeled-set pseudo-labels."""
        cfg = self.config
        model = self.ema.module if cfg.eval.use_ema else self.model
        metrics = evaluate_model(model, self.data.test, self.data.labeled_counts, self.mean, self.std,
                                 cfg.eval.batch_size, self.device)
        metrics.update(evaluate_pseudo_labels(model, self.pseudo_label_eval_set, self.algorithm,
                                              state_on(self.algorithm_state, "cpu"), self.mean, self.std,
                                              cfg.eval.batch_size, self.device))
        return metrics

    def _run_context(self, log: RunLog, run_dir: Path) -> RunContext:
        cfg, data = self.config, self.data
        return RunContext(
            run_dir=run_dir, log=log, class_names=data.class_names, labeled_ids=data.labeled.sample_ids,
            unlabeled_ids=data.unlabeled.sample_ids, labeled_labels=data.labeled.labels.to(self.device, copy=True),
            unlabeled_labels=data.unlabeled.labels.to(self.device, copy=True), labeled_counts=data.labeled_counts,
            unlabeled_counts=data.unlabeled_counts, batch_size=cfg.train.batch_size,
            unlabeled_batch_size=cfg.train.batch_size * cfg.train.unlabeled_ratio, total_steps=cfg.train.steps,
            start_step=self.step, algorithm=self.algorithm.name, debiased=self.algorithm.debiases, device=self.device,
            labeled_images=data.labeled.images, unlabeled_images=data.unlabeled.images)

    def _step_record(self, batch: TrainBatch, trained: TrainedStep, marginal_before: torch.Tensor) -> StepRecord:
        forward, result = trained.forward, trained.result
        logits_lb = forward.logits_lb.detach().float()
        features = {"features_lb": forward.features_lb.detach(), "features_weak": forward.features_weak.detach()} \
            if self.records_features else {}
        record = StepRecord(
            step=self.step, idx_lb=batch.idx_lb, y_lb=batch.y_lb, logits_lb=logits_lb,
            probs_lb=torch.softmax(logits_lb, dim=1), idx_ulb=batch.idx_ulb, y_ulb=batch.y_ulb,
            logits_weak=forward.logits_weak.detach().float(), probs_weak=result.probs_weak,
            probs_pseudo=result.probs_pseudo, pseudo_labels=result.pseudo_labels, mask=result.mask,
            class_marginal_before=marginal_before, class_marginal=result.class_marginal,
            loss=result.loss.detach(), loss_sup=result.loss_sup.detach(), loss_unsup=result.loss_unsup.detach(),
            lr=trained.lr, **features)
        if self.gather_records:  # hooks see the global batch, as in a one-process run
            per_sample = {name: self.dist.gather(value) for name, value in vars(record).items()
                          if name in _PER_SAMPLE_FIELDS and value is not None}
            losses = {name: self.dist.mean(getattr(record, name)) for name in ("loss", "loss_sup", "loss_unsup")}
            record = dataclasses.replace(record, **per_sample, **losses)
        return record

    def _per_class_scalars(self) -> dict[str, float]:
        """pseudo/class_marginal/<class> (q_hat) and the algorithm's other per-class values; host syncs here."""
        return {f"pseudo/{group}/{name}": value for group, values in self.algorithm.per_class(self.algorithm_state).items()
                for name, value in zip(self.data.class_names, values.tolist())}

    # -- resume ------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "algorithm": state_on(self.algorithm_state, "cpu"),
            "monitor": self.monitor.state_dict(),
            "hooks": {hook.name: hook.on_save_checkpoint() for hook in self.hooks},
            "rng": capture_rng_state(),
            "config": to_dict(self.config),
        }

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.algorithm_state = state_on(state["algorithm"], self.device)
        self.monitor.load_state_dict(state["monitor"])
        for hook in self.hooks:  # a hook added on resume starts fresh
            if hook.name in state["hooks"]:
                hook.on_load_checkpoint(state["hooks"][hook.name])
        restore_rng_state(state["rng"])


_PER_SAMPLE_FIELDS = frozenset({"idx_lb", "y_lb", "logits_lb", "probs_lb", "idx_ulb", "y_ulb", "logits_weak", "probs_weak",
                                "probs_pseudo", "pseudo_labels", "mask", "features_lb", "features_weak"})


def _eval_scalars(metrics: dict, class_names: list[str]) -> dict[str, float]:
    scalars = {f"eval/{name}": value for name, value in metrics.items() if name != "class_acc"}
    scalars.update({f"eval/class_acc/{name}": value for name, value in zip(class_names, metrics["class_acc"])})
    return scalars
