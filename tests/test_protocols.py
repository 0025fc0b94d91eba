"""Protocol presets: the resolved settings, the learning-rate curve, the augmentation drawn, the WRN
wiring of each codebase against a hand-written reference, and the uniform split conventions.

The expected values here are written out from the codebases' code (README, "Protocols"), not read
from debiaspl.config.protocols, so a wrong edit of a preset fails."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from debiaspl.config import ConfigError, DataConfig, from_dict, load_experiment, protocol_deviations
from debiaspl.config.loader import with_protocol
from debiaspl.config.protocols import PROTOCOLS
from debiaspl.data.augment import StrongAugment
from debiaspl.data.prepare import prepare_data, strong_augmentation, unlabeled_class_counts
from debiaspl.engine.optim import build_optimizer
from debiaspl.engine.run import run_folder, train_run
from debiaspl.models import build_model
from debiaspl.models.wide_resnet import WideResNet
from debiaspl.run_folder import METRICS_NAME, RUN_INFO_NAME

# knob -> value per protocol, as read from each codebase (kekmodel, USB + DebiasPL, DASO, ACR)
EXPECTED = {
    "kekmodel": {"optim.schedule": "cosine", "optim.decay_norm_and_bias": False, "train.steps": 2 ** 20,
                 "train.unlabeled_ratio": 7, "train.ema_warmup": "none", "train.ema_buffers": "copy",
                 "eval.interval": 1024, "data.strong_augment": "fixmatch", "data.geometric_fill": 0,
                 "data.cutout_fill": "gray", "data.cutout_box": "pil", "data.normalization": "cifar10",
                 "model.wrn_variant": "kekmodel"},
    "usb": {"optim.schedule": "constant", "optim.decay_norm_and_bias": False, "train.steps": 262144,
            "train.unlabeled_ratio": 2, "train.ema_warmup": "none", "train.ema_buffers": "copy",
            "eval.interval": 1024, "data.strong_augment": "usb", "data.geometric_fill": 0,
            "data.cutout_fill": "cifar_mean", "data.cutout_box": "pil", "data.normalization": "imagenet",
            "data.uniform_unlabeled_count": "total", "model.wrn_variant": "usb", "algorithm.debiaspl.tau": 0.4},
    "daso": {"optim.schedule": "constant", "optim.decay_norm_and_bias": True, "train.steps": 250000,
             "train.unlabeled_ratio": 2, "train.ema_warmup": "daso", "train.ema_buffers": "average",
             "eval.interval": 500, "data.strong_augment": "fixmatch", "data.geometric_fill": 0,
             "data.cutout_fill": "gray", "data.normalization": "cifar10", "data.uniform_unlabeled_count": "head",
             "model.wrn_variant": "daso"},
    "acr": {"optim.schedule": "cosine", "optim.decay_norm_and_bias": False, "train.steps": 250000,
            "train.unlabeled_ratio": 1, "train.ema_warmup": "none", "eval.interval": 500,
            "data.strong_augment": "fixmatch", "data.normalization": "cifar10", "data.uniform_unlabeled_count": "head",
            "model.wrn_variant": "kekmodel"},
}


def _resolved(protocol: str, **sections):
    raw = {"protocol": protocol, "algorithm": {"name": "fixmatch+debiaspl"}, **sections}
    return from_dict(with_protocol(raw), source="test")


def _value(config, dotted: str):
    node = config
    for part in dotted.split("."):
        node = getattr(node, "layer" if part == "debiaspl" else part)
    return node


@pytest.mark.parametrize("protocol", EXPECTED)
def test_every_knob_resolves_to_the_codebase_value(protocol):
    config = _resolved(protocol)
    assert config.protocol == protocol
    for key, expected in EXPECTED[protocol].items():
        assert _value(config, key) == expected, key
    shared = {"optim.lr": 0.03, "optim.momentum": 0.9, "optim.nesterov": True, "optim.weight_decay": 5e-4,
              "train.batch_size": 64, "train.ema_decay": 0.999, "model.name": "wrn28_2",
              "algorithm.unlabeled_weight": 1.0, "train.precision": "fp32", "eval.use_ema": True}
    for key, expected in shared.items():
        assert _value(config, key) == expected, key
    assert config.algorithm.base.threshold == 0.95
    assert protocol_deviations(config) == {}


def test_usb_schedule_depends_on_the_wrapper_and_defaults_stay_without_a_protocol():
    # USB's imbalanced wrapper (imb_algorithm: debiaspl) builds no scheduler; plain FixMatch gets cosine.
    assert _resolved("usb", algorithm={"name": "fixmatch"}).optim.schedule == "cosine"
    assert _resolved("usb", algorithm={"name": "flexmatch+debiaspl"}).optim.schedule == "constant"
    plain = from_dict({})
    assert (plain.protocol, plain.optim.schedule, plain.data.normalization, plain.model.wrn_variant,
            plain.data.geometric_fill, plain.train.ema_warmup) == ("none", "cosine", "data", "default", 128, "tf")


def test_file_keys_win_and_deviations_are_listed(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text("protocol: daso\ntrain:\n  steps: 4096\nmodel:\n  name: small_cnn\n")
    config = load_experiment(path, ["eval.interval=128"])
    assert (config.train.steps, config.model.name, config.eval.interval) == (4096, "small_cnn", 128)
    assert config.optim.decay_norm_and_bias  # the rest is DASO's
    assert protocol_deviations(config) == {"train.steps": (250000, 4096), "model.name": ("wrn28_2", "small_cnn"),
                                           "eval.interval": (500, 128)}
    assert load_experiment(path, ["protocol=none"]).optim.schedule == "cosine"
    with pytest.raises(ConfigError, match=r"protocol = 'dasso': must be one of none, kekmodel, usb, daso, acr \(did you mean daso\?\)"):
        load_experiment(path, ["protocol=dasso"])


@pytest.mark.parametrize("protocol,algorithm,schedule", [
    ("usb", "fixmatch+debiaspl", "constant"), ("usb", "fixmatch", "cosine"), ("kekmodel", "fixmatch", "cosine"),
    ("daso", "fixmatch+debiaspl", "constant"), ("acr", "flexmatch", "cosine")])
def test_lr_curve_of_a_short_run_and_the_folder_records_the_protocol(tmp_path, protocol, algorithm, schedule):
    raw = {"protocol": protocol, "data": {"dataset": "digits", "num_labeled_head": 20, "labeled_imbalance": 5,
                                          "num_unlabeled_head": 40, "unlabeled_imbalance": 5, "normalization": "data"},
           "model": {"name": "small_cnn"}, "algorithm": {"name": algorithm},
           "train": {"steps": 16, "batch_size": 8, "device": "cpu", "unlabeled_ratio": 2},
           "eval": {"interval": 8, "batch_size": 128},
           "logging": {"run_dir": str(tmp_path), "run_name": protocol, "log_interval": 1,
                       "checkpoint_interval": 16, "progress_bar": False}}
    config = from_dict(with_protocol(raw))
    train_run(config)
    folder = run_folder(config)
    lrs = {}
    for line in (folder / METRICS_NAME).read_text().splitlines():
        entry = json.loads(line)
        if "train/lr" in entry:
            lrs[entry["step"]] = entry["train/lr"]
    assert len(lrs) == 16
    if schedule == "constant":  # DASO, and USB under its imbalanced wrapper
        assert all(lr == pytest.approx(0.03) for lr in lrs.values())
    else:  # 0.03 cos(7 pi t / 16 T), t the steps done before this one
        for step, lr in lrs.items():
            assert lr == pytest.approx(0.03 * math.cos(7 * math.pi * (step - 1) / (16 * 16))), step
    info = json.loads((folder / RUN_INFO_NAME).read_text())
    assert info["protocol"] == protocol
    assert info["protocol_deviations"]["train.steps"] == {"protocol": PROTOCOLS[protocol].settings["train.steps"],
                                                          "run": 16}


def test_protocol_strong_views_and_optimizer_groups():
    usb, kekmodel, daso = (_resolved(name) for name in ("usb", "kekmodel", "daso"))
    assert strong_augmentation(usb.data) == StrongAugment("usb", 0, (125, 123, 114), "pil")
    assert strong_augmentation(kekmodel.data) == StrongAugment("fixmatch", 0, (127, 127, 127), "pil")
    assert strong_augmentation(DataConfig()) == StrongAugment("fixmatch", 128, (127, 127, 127), "centered")
    model = build_model("wrn28_2", 10, wrn_variant="daso")
    decayed = {group["weight_decay"]: sum(p.numel() for p in group["params"])
               for group in build_optimizer(model, daso.optim).param_groups}
    assert decayed.get(0.0, 0) == 0  # DASO decays every parameter
    skipping = build_optimizer(model, kekmodel.optim).param_groups
    assert sum(p.numel() for p in skipping[1]["params"]) > 0 and skipping[1]["weight_decay"] == 0.0


# ---- WRN wiring: hand-written forward passes of each codebase's BasicBlock


def _bn(module, x):
    return F.batch_norm(x, module.running_mean, module.running_var, module.weight, module.bias, False, 0.0, module.eps)


def _act(x):
    return F.leaky_relu(x, 0.1)


def _reference_block(block, x, wiring: str, first_of_network: bool):
    """kekmodel/USB's BasicBlock.forward, or TensorFlow FixMatch's (and DASO's) `residual`, transcribed."""
    conv = lambda layer, inp: F.conv2d(inp, layer.weight, None, layer.stride, layer.padding)  # noqa: E731
    equal_in_out = block.shortcut is None
    if wiring == "kekmodel":
        if not equal_in_out and first_of_network:
            x = _act(_bn(block.bn1, x))
            conv1_input = x
        elif not equal_in_out:
            conv1_input = x  # `out = relu1(bn1(x))` is computed and unused
        else:
            conv1_input = _act(_bn(block.bn1, x))
        out = conv(block.conv2, _act(_bn(block.bn2, conv(block.conv1, conv1_input))))
        return (x if equal_in_out else conv(block.shortcut, x)) + out
    x0 = x
    x = _act(_bn(block.bn1, x0))
    if first_of_network:
        x0 = x
    x = conv(block.conv2, _act(_bn(block.bn2, conv(block.conv1, x))))
    return (x0 if equal_in_out else conv(block.shortcut, x0)) + x


def _reference_forward(model: WideResNet, x, wiring: str):
    out = F.conv2d(x, model.conv1.weight, model.conv1.bias, 1, 1)
    for g, group in enumerate((model.block1, model.block2, model.block3)):
        for b, block in enumerate(group):
            out = _reference_block(block, out, wiring, first_of_network=(g == 0 and b == 0))
    out = _act(_bn(model.bn, out)).mean(dim=(2, 3))
    return F.linear(out, model.classifier.weight, model.classifier.bias)


def _randomise_statistics(model):
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.3)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(module.num_features, generator=generator) * 0.2)


@pytest.mark.parametrize("variant,wiring", [("default", "tf"), ("daso", "tf"), ("kekmodel", "kekmodel"),
                                            ("usb", "kekmodel")])
def test_wrn_variant_matches_the_hand_written_block(variant, wiring):
    torch.manual_seed(0)
    model = WideResNet(num_classes=3, depth=16, widen_factor=1, variant=variant).eval()
    _randomise_statistics(model)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(x), _reference_forward(model, x, wiring), rtol=1e-4, atol=1e-5)


def test_wrn_variants_differ_where_the_codebases_do():
    torch.manual_seed(0)
    tf, kek = WideResNet(3, depth=10, widen_factor=1).eval(), WideResNet(3, depth=10, widen_factor=1, variant="kekmodel")
    kek.eval()
    missing, unexpected = tf.load_state_dict(kek.state_dict(), strict=False)
    assert sorted({key.rsplit(".", 1)[0] for key in missing}) == ["block2.0.bn1", "block3.0.bn1"] and not unexpected
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert not torch.allclose(tf(x), kek(x))  # the same weights, wired otherwise
    usb, daso = WideResNet(3, variant="usb"), WideResNet(3, variant="daso")
    assert usb.conv1.bias is not None and tf.conv1.bias is None
    assert (usb.bn.eps, usb.block1[0].bn1.eps, usb.bn.momentum) == (1e-3, 1e-5, 0.001)
    assert {m.momentum for m in daso.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {0.1}
    assert {m.momentum for m in tf.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {0.001}
    with pytest.raises(ValueError, match="WRN variant 'tf'"):
        WideResNet(3, variant="tf")


# ---- the uniform unlabeled split: M1 per class (DASO, ACR) or in all (USB)


def test_uniform_split_counts_of_both_conventions():
    per_class = DataConfig(num_unlabeled_head=3000, unlabeled_imbalance=1, uniform_unlabeled_count="head")
    in_all = DataConfig(num_unlabeled_head=3000, unlabeled_imbalance=1, uniform_unlabeled_count="total")
    assert unlabeled_class_counts(per_class, 10) == [3000] * 10
    assert unlabeled_class_counts(in_all, 10) == [300] * 10
    skewed = DataConfig(num_unlabeled_head=3000, unlabeled_imbalance=-100, uniform_unlabeled_count="total")
    assert unlabeled_class_counts(skewed, 10) == [30, 50, 83, 139, 232, 387, 646, 1078, 1798, 3000]
    for convention, each in (("head", 100), ("total", 10)):  # and drawn from a real pool
        data = prepare_data(DataConfig(dataset="digits", num_labeled_head=15, labeled_imbalance=5, num_unlabeled_head=100,
                                       unlabeled_imbalance=1, uniform_unlabeled_count=convention))
        assert data.unlabeled_counts == [each] * 10


def test_readme_protocol_table_is_current():
    from pathlib import Path

    from debiaspl.config import protocol_table

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert protocol_table() in readme, "README protocol table is stale: paste `debiaspl config --protocols`"
