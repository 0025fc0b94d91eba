"""The training loop: FixMatch-style SSL with the step math chosen by `algorithm.name`.

`fit` reads top to bottom: batch -> forward -> step math -> backward -> optimizer -> scheduler ->
EMA -> state -> logging -> evaluation -> checkpoint. Everything a resumed run needs is in
`state_dict`.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

import torch
from tqdm import tqdm

from debiaspl.algorithm import ALGORITHMS, StepResult, uniform_class_marginal
from debiaspl.config import ExperimentConfig, to_dict
from debiaspl.data.loaders import to_model_input, train_loader
from debiaspl.data.prepare import TrainingData
from debiaspl.engine.checkpoint import capture_rng_state, restore_rng_state, save_checkpoint
from debiaspl.engine.evaluate import evaluate_model, evaluate_pseudo_labels
from debiaspl.engine.optim import build_optimizer, build_scheduler
from debiaspl.engine.run_log import RunLog
from debiaspl.models import build_model
from debiaspl.models.ema import ModelEMA

CHECKPOINT_FORMAT = 1
CHECKPOINT_KEYS = ("format", "step", "model", "ema", "optimizer", "scheduler", "class_marginal", "monitor", "rng",
                   "config")


def build_step_function(config: ExperimentConfig):
    """The algorithm's pure step function with its hyperparameters bound."""
    algorithm = config.algorithm
    options = {"threshold": algorithm.threshold, "unlabeled_weight": algorithm.unlabeled_weight,
               "marginal_momentum": algorithm.marginal_momentum}
    if algorithm.name == "debiaspl":
        options["tau"] = algorithm.tau
    return functools.partial(ALGORITHMS[algorithm.name], **options)


class PseudoLabelMonitor:
    """Sums over a logging interval, kept on the device so the loop never waits for the host."""

    TAGS = ("train/loss", "train/loss_sup", "train/loss_unsup", "pseudo/mask_rate", "pseudo/acc",
            "pseudo/acc_masked")

    def __init__(self, device: torch.device):
        self.sums = torch.zeros(7, device=device, dtype=torch.float64)
        self.steps = 0  # steps summed since the last flush

    def update(self, result: StepResult, y_ulb: torch.Tensor) -> None:
        correct = (result.pseudo_labels == y_ulb).double()
        mask = result.mask.double()
        self.sums += torch.stack([
            result.loss.detach().double(), result.loss_sup.detach().double(), result.loss_unsup.detach().double(),
            mask.mean(), correct.mean(), (correct * mask).sum(), mask.sum(),
        ])
        self.steps += 1

    def flush(self) -> dict[str, float]:
        """Interval means; the one host sync of a logging interval happens here."""
        loss, loss_sup, loss_unsup, mask_rate, acc, correct_masked, masked = self.sums.tolist()
        steps, self.steps = self.steps, 0
        self.sums.zero_()
        values = [loss / steps, loss_sup / steps, loss_unsup / steps, mask_rate / steps, acc / steps,
                  correct_masked / masked if masked else float("nan")]
        return dict(zip(self.TAGS, values))

    def state_dict(self) -> dict:
        return {"sums": self.sums.cpu(), "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.sums.copy_(state["sums"])
        self.steps = int(state["steps"])


class Trainer:
    def __init__(self, config: ExperimentConfig, data: TrainingData, device: torch.device):
        self.config, self.data, self.device = config, data, device
        torch.manual_seed(config.train.seed)
        in_channels = data.image_shape[0]
        self.model = build_model(config.model.name, data.num_classes, in_channels, config.model.dropout).to(device)
        self.ema = ModelEMA(self.model, config.train.ema_decay, warmup=config.train.ema_warmup)
        self.optimizer = build_optimizer(self.model, config.optim)
        self.scheduler = build_scheduler(self.optimizer, config.train.steps, config.optim.schedule)
        self.step_function = build_step_function(config)
        self.class_marginal = uniform_class_marginal(data.num_classes, device)
        self.monitor = PseudoLabelMonitor(device)
        self.step = 0
        self.mean = torch.tensor(data.mean, device=device)
        self.std = torch.tensor(data.std, device=device)

    # -- the loop --------------------------------------------------------------------------------
    def fit(self, log: RunLog, checkpoint_path: Path, until_step: int | None = None) -> dict:
        """Train to train.steps (or pause after `until_step`, checkpointed); returns the last eval metrics."""
        cfg = self.config
        total_steps, monitor = cfg.train.steps, self.monitor
        end_step = total_steps if until_step is None else min(until_step, total_steps)
        loader = train_loader(self.data.labeled, self.data.unlabeled, start_step=self.step, end_step=end_step,
                              num_workers=cfg.data.num_workers, pin_memory=self.device.type == "cuda",
                              batch_size=cfg.train.batch_size, unlabeled_ratio=cfg.train.unlabeled_ratio,
                              seed=cfg.train.seed, strong_variant=cfg.data.strong_augment)
        progress = tqdm(total=total_steps, initial=self.step, desc=cfg.logging.run_name, unit="step",
                        dynamic_ncols=True, disable=None if cfg.logging.progress_bar else True)
        metrics, interval_start, steps_timed = {}, time.perf_counter(), 0
        self.model.train()
        for batch in loader:
            batch = {key: value.to(self.device, non_blocking=True) for key, value in batch.items()}
            num_lb, num_ulb = len(batch["y_lb"]), len(batch["idx_ulb"])
            # One forward pass over labeled, weak and strong views, so BatchNorm sees them together
            # as in FixMatch; the weak logits are detached inside the step function.
            inputs = torch.cat([batch["x_lb"], batch["x_ulb_weak"], batch["x_ulb_strong"]])
            logits = self.model(to_model_input(inputs, self.mean, self.std))
            logits_lb, logits_weak, logits_strong = logits.split([num_lb, num_ulb, num_ulb])
            result = self.step_function(logits_lb, batch["y_lb"], logits_weak, logits_strong, self.class_marginal)

            self.optimizer.zero_grad(set_to_none=True)
            result.loss.backward()
            self.optimizer.step()
            lr = self.scheduler.get_last_lr()[0]  # the rate this step used
            self.scheduler.step()
            self.step += 1
            self.ema.update(self.model, self.step)
            self.class_marginal = result.class_marginal
            monitor.update(result, batch["y_ulb"])
            steps_timed += 1
            progress.update(1)

            is_last = self.step == total_steps
            if self.step % cfg.logging.log_interval == 0 or is_last:
                steps_per_second = steps_timed / max(time.perf_counter() - interval_start, 1e-9)
                scalars = monitor.flush()
                scalars["train/lr"] = lr
                scalars["train/steps_per_second"] = steps_per_second
                scalars.update(self._marginal_scalars())
                log.scalars(self.step, scalars)
                progress.set_postfix(loss=f"{scalars['train/loss']:.3f}", mask=f"{scalars['pseudo/mask_rate']:.2f}")
                interval_start, steps_timed = time.perf_counter(), 0
            if self.step % cfg.eval.interval == 0 or is_last:
                metrics = self.evaluate()
                log.scalars(self.step, _eval_scalars(metrics, self.data.class_names))
                progress.write(f"step {self.step}: top1 {metrics['top1']:.4f}  balanced {metrics['balanced_acc']:.4f}")
            if self.step % cfg.logging.checkpoint_interval == 0 or self.step == end_step:
                save_checkpoint(self.state_dict(), checkpoint_path)
        progress.close()
        if not metrics and self.step == total_steps:  # resumed from the final checkpoint
            metrics = self.evaluate()
        return metrics

    def evaluate(self) -> dict:
        """Test metrics of the evaluated model, plus the quality of its unlabeled-set pseudo-labels."""
        cfg = self.config
        model = self.ema.module if cfg.eval.use_ema else self.model
        metrics = evaluate_model(model, self.data.test, self.data.labeled_counts, self.mean, self.std,
                                 cfg.eval.batch_size, self.device)
        tau = cfg.algorithm.tau if cfg.algorithm.name == "debiaspl" else 0.0
        metrics.update(evaluate_pseudo_labels(model, self.data.unlabeled, self.class_marginal, tau,
                                              cfg.algorithm.threshold, self.mean, self.std, cfg.eval.batch_size,
                                              self.device))
        return metrics

    def _marginal_scalars(self) -> dict[str, float]:
        values = self.class_marginal.tolist()
        return {f"pseudo/class_marginal/{name}": value for name, value in zip(self.data.class_names, values)}

    # -- resume ------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "class_marginal": self.class_marginal.cpu(),
            "monitor": self.monitor.state_dict(),
            "rng": capture_rng_state(),
            "config": to_dict(self.config),
        }

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.class_marginal = state["class_marginal"].to(self.device)
        self.monitor.load_state_dict(state["monitor"])
        restore_rng_state(state["rng"])


def _eval_scalars(metrics: dict, class_names: list[str]) -> dict[str, float]:
    scalars = {f"eval/{name}": value for name, value in metrics.items() if name != "class_acc"}
    scalars.update({f"eval/class_acc/{name}": value for name, value in zip(class_names, metrics["class_acc"])})
    return scalars
