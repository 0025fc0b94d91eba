"""Named protocols: every setting the way one reference codebase trains CIFAR-10(-LT).

`protocol: usb` in an experiment file (or `--set protocol=usb`) fills in these settings under the
file's own: a key the file sets wins, and `protocol_deviations` lists where a run departs from its
protocol (the run folder records both). The dataset sizes and imbalance ratios (N1, M1, gamma) are
the experiment's, not the protocol's.

Each value was read from the codebase's code (the commit is in `codebase`; the file and line are
in the comment beside it). What a protocol cannot reproduce is in its `unmatched`; the README's
"Protocols" table is `protocol_table()`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

NO_PROTOCOL = "none"
BASE_PART = "{base}"  # in a key: the base algorithm named in algorithm.name (fixmatch, flexmatch)


@dataclass(frozen=True)
class Protocol:
    name: str
    codebase: str                      # repository @ commit the values come from
    settings: Mapping[str, Any]        # dotted key -> value
    with_layer: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # layer -> extra settings when present
    reports: str = ""                  # which accuracy the codebase reports
    unmatched: tuple[str, ...] = ()    # what it does that these settings do not reproduce

    def resolved(self, base: str, layer: str | None) -> dict[str, Any]:
        """The settings for algorithm BASE(+LAYER), with {base} filled in."""
        settings = {**self.settings, **(self.with_layer.get(layer, {}) if layer else {})}
        return {key.replace(BASE_PART, base): value for key, value in settings.items()}


# Shared by all four: SGD(0.03, momentum 0.9, Nesterov), weight decay 5e-4 on CIFAR-10, threshold
# 0.95, lambda_u 1, EMA 0.999 evaluated, WRN-28-2 without dropout, fp32, one joint forward pass.
_SHARED = {
    "model.name": "wrn28_2",
    "model.dropout": 0.0,
    "optim.lr": 0.03,
    "optim.momentum": 0.9,
    "optim.nesterov": True,
    "optim.weight_decay": 5e-4,
    "train.batch_size": 64,
    "train.ema_decay": 0.999,
    "train.precision": "fp32",
    "train.weak_forward": "joint",
    "eval.use_ema": True,
    "algorithm.unlabeled_weight": 1.0,
    f"algorithm.{BASE_PART}.threshold": 0.95,
    "data.strong_augment": "fixmatch",
    "data.geometric_fill": 0,        # PIL's default: none of the four passes fillcolor
    "data.cutout_fill": "gray",
    "data.cutout_box": "pil",
    "data.normalization": "cifar10",
}

PROTOCOLS: dict[str, Protocol] = {
    "kekmodel": Protocol(
        "kekmodel", "kekmodel/FixMatch-pytorch @ 040be3b8",
        {**_SHARED,
         "model.wrn_variant": "kekmodel",           # models/wideresnet.py:43-52 conv1(out if equalInOut else x)
         "optim.schedule": "cosine",                 # train.py:43-55 cos(pi * 7/16 * t / T), warmup 0
         "optim.decay_norm_and_bias": False,         # train.py:243 no_decay = ['bias', 'bn']
         "train.steps": 2 ** 20,                     # train.py:84 --total-steps 2**20
         "train.unlabeled_ratio": 7,                 # train.py:104 --mu 7
         "train.ema_warmup": "none",                 # models/ema.py: constant decay
         "train.ema_buffers": "copy",                # models/ema.py:33-38 buffers copied
         "eval.interval": 1024},                     # train.py:86 --eval-step 1024
        reports="best and mean of the last 20 evaluations (train.py:428-448)",
        unmatched=("balanced CIFAR-10 only: no long-tailed split, and its unlabeled set is all 50,000 training "
                   "images, the labeled ones included",)),
    "usb": Protocol(
        "usb", "microsoft/Semi-supervised-learning @ 1ef4cbeb, classic_cv_imb",
        {**_SHARED,
         "model.wrn_variant": "usb",                 # nets/wrn/wrn.py:84 stem bias=True, :97 final BN eps 0.001
         "optim.schedule": "cosine",                 # core/algorithmbase.py:181 cosine 7/16 for a plain algorithm
         "optim.decay_norm_and_bias": False,         # nets/utils.py:90 ndim <= 1 or .bias: no decay
         "train.steps": 262144,                      # config yaml: num_train_iter 262144 (2^18)
         "train.unlabeled_ratio": 2,                 # yaml: uratio 2
         "train.ema_warmup": "none",                 # core/utils/misc.py:154 constant ema_m
         "train.ema_buffers": "copy",                # misc.py:157-158 buffers cloned
         "eval.interval": 1024,                      # yaml: num_eval_iter 1024
         "data.strong_augment": "usb",               # datasets/augmentation/randaugment.py:196-201 RandAugment(3, 5)
         "data.cutout_fill": "cifar_mean",           # randaugment.py:138 (125, 123, 114)
         "data.normalization": "imagenet",           # datasets/cv_datasets/cifar.py:17-20 mean/std['cifar10']
         "data.uniform_unlabeled_count": "total"},   # datasets/utils.py:88-94 int(ulb_num_labels / num_classes)
        # The imbalanced-algorithm wrapper (imb_algorithm: debiaspl) builds no scheduler on CIFAR
        # (core/algorithmbase.py:529-538) and hard-codes tau = 0.4 (imb_algorithms/debiaspl/utils.py:17).
        with_layer={"debiaspl": {"optim.schedule": "constant", "algorithm.debiaspl.tau": 0.4,
                                 "algorithm.marginal_momentum": 0.999}},
        reports="best-so-far top-1 of the EMA model on the test set (core/hooks/evaluation.py:21-31)",
        unmatched=("its DebiasPL is a no-op at this commit: p_hat is updated with probs.mean(), a scalar, so it stays "
                   "uniform (imb_algorithms/debiaspl/debiaspl.py:52-54); ours updates q_hat as the paper does",)),
    "daso": Protocol(
        "daso", "ytaek-oh/daso @ 3541a6c4, configs/cifar10/fixmatch.yaml",
        {**_SHARED,
         "model.wrn_variant": "daso",                # lib/models/wrn.py: BN-LReLU inside the branch, nn.BatchNorm2d defaults
         "optim.schedule": "constant",               # defaults.py:185 APPLY_SCHEDULER False
         "optim.decay_norm_and_bias": True,          # lib/solver/build.py:16 SGD(model.parameters(), ...)
         "train.steps": 250000,                      # defaults.py:182 MAX_ITER
         "train.unlabeled_ratio": 2,                 # fixmatch.yaml:30 UNLABELED_BATCH_RATIO
         "train.ema_warmup": "daso",                 # lib/models/ema_model.py:30 min(1 - 1/(step + 1), 0.999)
         "train.ema_buffers": "average",             # ema_model.py:36-38 buffers averaged
         "eval.interval": 500,                       # defaults.py:212 PERIODS.EVAL
         "data.uniform_unlabeled_count": "head"},    # lib/dataset/utils.py:87-91 num_ul_head per class
        reports="median of the last 20 evaluations of the EMA model (lib/algorithm/base_algorithm.py:121-128)",
        unmatched=("it holds 500 images per class out of the training pool as a validation set before drawing "
                   "the split (lib/dataset/cifar10.py:32-33): the same counts are drawn here from all 5,000",)),
    "acr": Protocol(
        "acr", "Gank0078/ACR @ 9a8f421e",
        {**_SHARED,
         "model.wrn_variant": "kekmodel",            # models/wideresnet.py: kekmodel's file plus a second head
         "optim.schedule": "cosine",                 # train.py:81-93, warmup 0
         "optim.decay_norm_and_bias": False,         # train.py:377 no_decay = ['bias', 'bn']
         "train.steps": 250000,                      # train.py:143 --total-steps
         "train.unlabeled_ratio": 1,                 # train.py:163 --mu 1
         "train.ema_warmup": "none",                 # models/ema.py (kekmodel's)
         "train.ema_buffers": "copy",
         "eval.interval": 500,                       # train.py:145 --eval-step
         "data.uniform_unlabeled_count": "head"},    # dataset/cifar.py:63 make_imb_data(num_max_u, ..., 1)
        reports="best and mean of the last 20 evaluations of its second (balanced) head (train.py:609-634)",
        unmatched=("ACR's own loss: two heads and two strong views of each unlabeled image (dataset/cifar.py:319-323); "
                   "this preset trains the algorithm you name with ACR's protocol",
                   "its unlabeled set also holds the labeled images, and its split takes the first images of each "
                   "class in file order, without shuffling (dataset/cifar.py:252-254)")),
}

PROTOCOL_NAMES = (NO_PROTOCOL, *PROTOCOLS)


def protocol_table() -> str:
    """Markdown: one row per setting any protocol sets, one column per protocol ('-' where it sets none)."""
    keys = list(dict.fromkeys(key for protocol in PROTOCOLS.values() for key in protocol.settings))
    lines = ["| setting | " + " | ".join(f"`{name}`" for name in PROTOCOLS) + " |",
             "|---|" + "---|" * len(PROTOCOLS)]
    for key in keys:
        cells = []
        for protocol in PROTOCOLS.values():
            value = _format(protocol.settings[key]) if key in protocol.settings else "-"
            extra = [f"{_format(settings[key])} with +{layer}" for layer, settings in protocol.with_layer.items()
                     if key in settings]
            cells.append(", ".join([value, *extra]))
        lines.append(f"| `{key.replace(BASE_PART, '<base>')}` | " + " | ".join(cells) + " |")
    layer_keys = list(dict.fromkeys(key for protocol in PROTOCOLS.values() for settings in protocol.with_layer.values()
                                    for key in settings if key not in keys))
    for key in layer_keys:
        cells = [", ".join(f"{_format(settings[key])} with +{layer}" for layer, settings in protocol.with_layer.items()
                           if key in settings) or "-" for protocol in PROTOCOLS.values()]
        lines.append(f"| `{key}` | " + " | ".join(cells) + " |")
    lines.append("| reports | " + " | ".join(protocol.reports for protocol in PROTOCOLS.values()) + " |")
    lines.append("| not reproduced | " + " | ".join("; ".join(protocol.unmatched) or "-"
                                                    for protocol in PROTOCOLS.values()) + " |")
    lines.append("| code | " + " | ".join(protocol.codebase for protocol in PROTOCOLS.values()) + " |")
    return "\n".join(lines) + "\n"


def _format(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value < 0.01 and value != 0:
        return f"{value:g}"
    return str(value)
