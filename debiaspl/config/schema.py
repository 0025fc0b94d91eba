"""The experiment schema: frozen, typed dataclasses whose defaults are FixMatch's CIFAR recipe with
DebiasPL on top (tau = 0.4 and m = 0.999, as USB sets them; README "Where the defaults come from").

Each field carries its meaning and bounds (`option`); fields marked `execution` change how a run
executes or reports, never what it learns. Algorithm and hook options are declared next to their
code (debiaspl.algorithm, debiaspl.hooks) and validated by the same loader (debiaspl.config.loader).
`describe_fields` lists every key with its type, default and meaning (`debiaspl config --reference`).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, get_args, get_origin

from debiaspl.algorithm import (ALGORITHMS, DEFAULT_ALGORITHM, LAYER_SEPARATOR, LAYERS, Algorithm, algorithm_names,
                                compose_algorithm, parse_algorithm_name)
from debiaspl.config.protocols import NO_PROTOCOL, PROTOCOL_NAMES
from debiaspl.data.datasets import DATASETS
from debiaspl.models import MODELS, WRN_VARIANTS
from debiaspl.options import option

# The largest seed: numpy's generators take any seed >= 0, torch.manual_seed one below 2**64; 63
# bits also fit an int64 anywhere a seed is stored or mixed (data.loaders.derive_seed makes 63-bit ones).
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class DataConfig:
    dataset: str = option("cifar10", "which data: torchvision CIFAR-10/100, an ImageFolder tree (root/train/CLASS/*, root/test/CLASS/*), or scikit-learn's bundled 8x8 digits (offline)", choices=DATASETS)
    root: str = option("data", "folder holding the dataset (CIFAR is downloaded here when absent)", execution=True)
    download: bool = option(True, "download CIFAR into `root` when it is not there", execution=True)
    num_labeled_head: int = option(1500, "N1: labeled images of the most frequent class", ge=1)
    labeled_imbalance: float = option(100.0, "gamma_l: ratio of the labeled head to tail class count", ge=1)
    num_unlabeled_head: int = option(3000, "M1: unlabeled images of the most frequent class (0: unlabeled = the rest of the train set)", ge=0)
    unlabeled_imbalance: float = option(100.0, "gamma_u: 1 = uniform unlabeled set, negative = reversed order (tail classes most frequent)")
    uniform_unlabeled_count: Literal["head", "total"] = option("head", "what M1 counts when gamma_u = 1: head, M1 images of every class (DASO, ACR: 10 x 3000) or total, M1 images in all (USB: 10 x 300)")
    split_seed: int = option(0, "seed of the labeled/unlabeled draw (separate from train.seed so runs share a split)", ge=0, le=MAX_SEED)
    strong_augment: Literal["fixmatch", "usb"] = option("fixmatch", "RandAugment variant of the strong view: FixMatch's (kekmodel's RandAugmentMC(2, 10): 2 ops, integer magnitude 1..9, each applied with p = 0.5, Cutout side 0.5 x size) or USB's (RandAugment(3, 5): 3 ops always applied, continuous magnitude, Cutout side uniform(0, 0.5) x size)")
    geometric_fill: int = option(128, "fill of the pixels that rotate, shear and translate bring in from outside the image (128: TensorFlow FixMatch's gray; 0: the PIL default that kekmodel, USB, DASO and ACR use)", ge=0, le=255)
    cutout_fill: Literal["gray", "cifar_mean"] = option("gray", "Cutout colour: gray (127, 127, 127) as kekmodel, DASO and ACR, or cifar_mean (125, 123, 114) as USB")
    cutout_box: Literal["centered", "pil"] = option("centered", "Cutout geometry: centered (the paper's square around a uniform pixel, clipped at the borders) or pil (kekmodel's and USB's CutoutAbs: corner clamped at 0 so the box slides inside, PIL's inclusive rectangle one pixel larger)")
    normalization: Literal["data", "cifar10", "imagenet", "minus_one_one"] = option("data", "input normalisation: data (mean and std of this run's labeled + unlabeled images), cifar10 (kekmodel's, DASO's and ACR's constants), imagenet (USB's, also for CIFAR) or minus_one_one (x / 127.5 - 1, TensorFlow FixMatch)")
    image_size: int = option(0, "side S of the square images the model sees: every image is resized (shorter side to S, bilinear) and center-cropped to S x S once, when decoded (the evaluation view), and the augmentations start from that square, their magnitudes and Cutout scaled to S (0: the images' own size, which must then be one size)", ge=0, le=4096)
    storage: Literal["cache", "memory", "stream"] = option("cache", "how an image folder's pixels are held: cache (decoded once into a memory-mapped file under cache_dir, reused while the folder's files are unchanged), memory (decoded on every run into RAM) or stream (each batch decodes its files, for folders too large for any cache; needs image_size); CIFAR and digits always load into memory", execution=True)
    cache_dir: str = option("", "folder of the decoded-image cache (empty: $XDG_CACHE_HOME/debiaspl or ~/.cache/debiaspl)", execution=True)
    weak_crop: Literal["pad_crop", "random_resized_crop"] = option("pad_crop", "crop of the weak view (and of the strong view, which starts from it): pad_crop (FixMatch: reflect-pad by 1/8 of the size, random crop back) or random_resized_crop (a random 8-100% area with aspect 3/4..4/3, resized to the square, as ImageNet recipes train)")
    num_workers: int = option(0, "background processes that gather and augment batches (0: in the training process, which on few CPU cores is faster: a worker competes with the compute threads)", ge=0, execution=True)
    augment_on: Literal["auto", "loader", "device"] = option("auto", "where batches are augmented: in the loader (the training process, or its workers), or on the training device after the copy (auto: device on CUDA, loader on CPU); the result is the same", execution=True)
    teacher_logits: str = option("", "an .npz of a teacher's logits for the train images (arrays sample_ids [N] and logits [N, C], classes in the dataset's order; e.g. CLIP's zero-shot ones): the images it is confident about become the labeled set with its labels, all others the unlabeled set, and its label trains an unlabeled image the student's mask leaves out, as in the official zero-shot script (the long-tailed split keys are then not used)")
    teacher_threshold: float = option(0.95, "with teacher_logits: the teacher confidence (max softmax) from which an image joins the labeled set (the official CLIPPseudoLabel0.95.csv)", gt=0, le=1)
    teacher_fill_threshold: float = option(0.3, "with teacher_logits: the teacher confidence from which its label trains an unlabeled image the student's mask leaves out (the official script's 0.3)", ge=0, le=1)
    label_file: str = option("", "CSV with columns sample_id,label (class name or index): these train-pool images join the labeled set with these labels, e.g. newly annotated ones from `debiaspl select` (a relative path is relative to the working directory)")


@dataclass(frozen=True)
class ModelConfig:
    name: str = option("wrn28_2", "network: WRN-28-2 (CIFAR-10), WRN-28-8 (CIFAR-100), small_cnn (CPU runs), small_cnn_gn (the same with GroupNorm, independent of the batch split across processes), or any torchvision:NAME / timm:NAME classification architecture (timm: pip install timm)", choices=MODELS)
    dropout: float = option(0.0, "dropout rate before the classifier", ge=0, lt=1)
    weights: str = option("", "a local state_dict (.pt/.pth, loaded with weights_only) to start the network from, e.g. ImageNet weights saved from torchvision or timm; a classifier head with another class count is left out (said in one line); nothing is downloaded; a relative path is relative to the working directory (empty: random initialisation)")
    wrn_variant: str = option("default", "how the WRN models are defined: default (TensorFlow FixMatch's wiring, every conv1 sees BN-LReLU of its input; BN momentum 0.001), kekmodel (also ACR: the first block of groups 2 and 3 feeds conv1 the raw input), usb (kekmodel's, plus final BN eps 1e-3 and a stem bias) or daso (default wiring, PyTorch's BN momentum 0.1); other networks ignore it", choices=WRN_VARIANTS)


@dataclass(frozen=True)
class AlgorithmConfig:
    """`algorithm:` a base algorithm with an optional layer, each with its own section of options.

    In YAML the options of each part named in `name` sit in a section named after it
    (`algorithm.fixmatch.threshold`, `algorithm.debiaspl.tau`); a section of a part the name does
    not include is an error.
    """

    name: str = option(DEFAULT_ALGORITHM, "the base algorithm (fixmatch, flexmatch), alone or with a layer over its pseudo-labels and loss: BASE+debiaspl adds DebiasPL's causal logit debiasing and adaptive margin loss", choices=algorithm_names())
    unlabeled_weight: float = option(1.0, "lambda_u: weight of the unlabeled loss", ge=0)
    marginal_momentum: float = option(0.999, "DebiasPL's m: momentum of q_hat, the estimate of the pseudo-labels' class marginal (tracked and logged for every algorithm; DebiasPL debiases with it)", ge=0, lt=1)
    base: Any = None   # the options of the base named in `name` (None: its defaults)
    layer: Any = None  # the options of its layer (None: its defaults; stays None without a layer)

    def __post_init__(self):
        base, layer = parse_algorithm_name(self.name)
        if self.base is None:
            object.__setattr__(self, "base", base.Options())
        if layer is not None and self.layer is None:
            object.__setattr__(self, "layer", layer.Options())
        if not isinstance(self.base, base.Options) or (
                not isinstance(self.layer, layer.Options) if layer else self.layer is not None):
            raise ValueError(f"options {type(self.base).__name__} and {type(self.layer).__name__} are not those of "
                             f"algorithm {self.name}")

    @property
    def base_name(self) -> str:
        return self.name.partition(LAYER_SEPARATOR)[0]

    @property
    def layer_name(self) -> str | None:
        return self.name.partition(LAYER_SEPARATOR)[2] or None

    def build(self) -> Algorithm:
        """The algorithm these options describe, ready for the trainer and the offline verbs."""
        return compose_algorithm(self.name, self.base, self.layer, unlabeled_weight=self.unlabeled_weight,
                                 marginal_momentum=self.marginal_momentum)


@dataclass(frozen=True)
class OptimConfig:
    lr: float = option(0.03, "SGD learning rate (eta)", gt=0)
    momentum: float = option(0.9, "SGD momentum", ge=0, lt=1)
    nesterov: bool = option(True, "Nesterov momentum")
    weight_decay: float = option(5e-4, "L2 weight decay, not applied to biases and BatchNorm (FixMatch: 5e-4 CIFAR-10, 1e-3 CIFAR-100)", ge=0)
    schedule: Literal["cosine", "constant"] = option("cosine", "cosine: lr * cos(7 pi t / (16 T)) as in FixMatch; constant: lr throughout (DASO; USB's imbalanced-algorithm wrapper on CIFAR)")
    decay_norm_and_bias: bool = option(False, "apply weight decay to BatchNorm weights and all biases too (DASO decays every parameter; kekmodel, USB and ACR do not)")


@dataclass(frozen=True)
class TrainConfig:
    steps: int = option(262144, "T: optimizer steps in the whole run (2^18)", ge=1)
    batch_size: int = option(64, "B: labeled images per step", ge=1)
    unlabeled_ratio: int = option(2, "mu: unlabeled images per step = mu * B", ge=1)
    ema_decay: float = option(0.999, "decay of the weight EMA used for evaluation", ge=0, lt=1)
    ema_warmup: Literal["tf", "daso", "none"] = option("tf", "EMA decay at step t: tf min(d, (1+t)/(10+t)) as TensorFlow's ExponentialMovingAverage, so short runs are not dominated by the initial weights; daso min(d, 1 - 1/t), DASO's (the first update copies the weights); none: d from the first step (kekmodel, USB, ACR)")
    ema_buffers: Literal["copy", "average"] = option("copy", "BatchNorm running statistics of the EMA model: copied from the model (kekmodel, USB, ACR) or averaged like the weights (DASO)")
    seed: int = option(0, "seed of weights, batch order and augmentation", ge=0, le=MAX_SEED)
    device: str = option("auto", "auto (cuda when available), cpu, cuda or cuda:N", execution=True)
    precision: Literal["auto", "fp32", "bf16"] = option("auto", "bf16 autocast of the forward pass (losses and q_hat stay float32); auto: bf16 on CUDA devices that support it, on CPUs with AMX and on AMD CPUs with AVX512-BF16, fp32 elsewhere (AVX512-BF16 on an Intel CPU without AMX measured slower than fp32)")
    channels_last: bool = option(True, "NHWC memory layout for the model and its inputs (faster convolutions with bf16 and on many CPUs)", execution=True)
    compile: bool = option(False, "torch.compile the model (slow first steps; worth it for long GPU runs)", execution=True)
    weak_forward: Literal["joint", "separate"] = option("joint", "joint: labeled, weak and strong views in one forward pass with gradients, so BatchNorm sees them together (FixMatch); separate: the weak view in its own pass without gradients (cheaper)")
    deterministic: bool = option(False, "deterministic CUDA kernels (slower), so GPU runs repeat and resume bit for bit as CPU runs do", execution=True)


@dataclass(frozen=True)
class EvalConfig:
    interval: int = option(1024, "evaluate on the test set every this many steps (and at the end)", ge=1)
    batch_size: int = option(256, "test batch size", ge=1, execution=True)
    use_ema: bool = option(True, "evaluate the EMA model (FixMatch) rather than the raw weights")
    pseudo_label_images: int = option(0, "measure the pseudo-labels (eval/pseudo_*) on at most this many unlabeled images, a fixed random sample, the same at every evaluation; 0: all of them (a forward pass over the whole unlabeled set at every evaluation, which at ImageNet-LT's size costs more than the training steps between)", ge=0, execution=True)


@dataclass(frozen=True)
class LoggingConfig:
    run_dir: str = option("runs", "parent folder of run folders", execution=True)
    run_name: str = option("", "run folder name under run_dir (empty: the experiment file's name)", execution=True)
    log_interval: int = option(50, "write training scalars every this many steps (the only host syncs)", ge=1, execution=True)
    checkpoint_interval: int = option(1024, "write the resumable checkpoint every this many steps (and at the end)", ge=1, execution=True)
    progress_bar: bool = option(True, "show a tqdm progress bar when stderr is a terminal; without it (false, or output redirected to a file) one timestamped line every log_interval steps", execution=True)
    snapshot_interval: int = option(0, "keep the model weights every this many steps in snapshots/ for `debiaspl influence` (TracIn); 0: none", ge=0, execution=True)


@dataclass(frozen=True)
class HookConfig:
    """One entry of the `hooks:` list: a hook name from debiaspl.hooks.HOOKS and its validated options."""

    name: str
    options: Any


@dataclass(frozen=True)
class ExperimentConfig:
    # the settings of a reference codebase under the file's own (debiaspl.config.protocols)
    protocol: str = option(NO_PROTOCOL, "set every training knob as one reference codebase does (README, \"Protocols\"); keys the file sets win, and the run folder records where the run departs from its protocol", choices=PROTOCOL_NAMES, execution=True)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    # analyses that watch training; they never change the weights
    hooks: tuple[HookConfig, ...] = field(default=(), metadata={"execution": True})


def describe_fields(cls: type = ExperimentConfig, prefix: str = "") -> list[tuple[str, str, Any, str]]:
    """(dotted key, type, default, doc) for every leaf field: the README's config reference.

    The algorithm section lists the options of every base and layer, each under its own name.
    """
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if f.name == "hooks" and cls is ExperimentConfig:
            continue  # documented per hook: describe_fields(HOOKS[name].Options, f"hooks[].")
        if cls is AlgorithmConfig and f.name in ("base", "layer"):
            continue  # below, per registered part
        if dataclasses.is_dataclass(hint):
            rows += describe_fields(hint, prefix + f.name + ".")
        else:
            choices = f.metadata.get("choices")
            kind = (choices.describe() if hasattr(choices, "describe") else " / ".join(choices)) if choices else _type_name(hint)
            rows.append((prefix + f.name, kind, f.default, f.metadata.get("doc", "")))
    if cls is AlgorithmConfig:
        for part, with_it in [*((b, f"with the base {b}") for b in ALGORITHMS), *((l, f"with the layer +{l}") for l in LAYERS)]:
            options = (ALGORITHMS.get(part) or LAYERS[part]).Options
            rows += [(key, kind, default, f"{doc} ({with_it})")
                     for key, kind, default, doc in describe_fields(options, f"{prefix}{part}.")]
    return rows


def _type_name(hint: Any) -> str:
    if get_origin(hint) is Literal:
        return " / ".join(map(str, get_args(hint)))
    if isinstance(hint, types.UnionType):
        return " / ".join(_type_name(a) for a in get_args(hint))
    return getattr(hint, "__name__", str(hint))
