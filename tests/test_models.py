"""Tests for debiaspl.models: the registry, WideResNet-28-k / SmallCNN contracts, and ModelEMA."""

import math

import pytest
import torch
from torch import nn

from debiaspl.models import MODELS, Classifier, ModelEMA, build_model

NUM_CLASSES = 10


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def wrn_param_count(widen_factor: int, num_classes: int, in_channels: int = 3, blocks_per_group: int = 4) -> int:
    """Parameters of WRN-(6n+4)-k from the architecture: stem conv, three groups of pre-activation
    blocks (BN has weight + bias), 1x1 shortcut where the width changes, final BN, linear layer."""

    def block(c_in: int, c_out: int) -> int:
        shortcut = c_in * c_out if c_in != c_out else 0
        return 2 * c_in + 9 * c_in * c_out + 2 * c_out + 9 * c_out * c_out + shortcut

    widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
    total = 9 * in_channels * widths[0]
    for c_in, c_out in zip(widths[:-1], widths[1:]):
        total += block(c_in, c_out) + (blocks_per_group - 1) * block(c_out, c_out)
    return total + 2 * widths[-1] + widths[-1] * num_classes + num_classes


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---- contract shared by every registered model -------------------------------------------------


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("in_channels,size", [(3, 32), (1, 8)])
def test_output_shapes_and_forward_is_classifier_of_features(name, in_channels, size):
    model = build_model(name, NUM_CLASSES, in_channels=in_channels).eval()
    assert isinstance(model, Classifier)
    x = torch.randn(2, in_channels, size, size)
    with torch.no_grad():
        logits = model(x)
        features = model.forward_features(x)
        assert logits.shape == (2, NUM_CLASSES)
        assert features.shape == (2, model.classifier.in_features)
        assert isinstance(model.classifier, nn.Linear) and model.classifier.out_features == NUM_CLASSES
        assert torch.equal(logits, model.classifier(features))


@pytest.mark.parametrize("name", ["small_cnn", "wrn28_2"])
def test_every_parameter_gets_a_gradient(name):
    # A parameter outside the graph breaks DDP (without find_unused_parameters) and silently
    # decays under weight decay; the FixMatch PyTorch port has two such BatchNorms.
    model = build_model(name, NUM_CLASSES).train()
    model(torch.randn(4, 3, 8, 8)).square().sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_unknown_model_name_suggests_close_match():
    with pytest.raises(ValueError, match=r"unknown model 'wrn28-2'.*did you mean 'wrn28_2'") as info:
        build_model("wrn28-2", NUM_CLASSES)
    assert "small_cnn" in str(info.value)  # the choices are listed


@pytest.mark.parametrize("name", ["small_cnn", "wrn28_2"])
def test_dropout_is_stochastic_in_train_mode_and_deterministic_in_eval(name):
    x = torch.randn(8, 3, 8, 8)
    model = build_model(name, NUM_CLASSES, dropout=0.5)
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))
    # Without dropout, train mode is deterministic too: the randomness above came from dropout.
    plain = build_model(name, NUM_CLASSES).train()
    assert torch.equal(plain(x), plain(x))


@pytest.mark.parametrize("size", [2, 3, 5])
def test_small_cnn_skips_pooling_on_tiny_maps(size):
    # Pooling stops below 4x4, so even maps smaller than the 8x8 minimum keep a non-empty map.
    model = build_model("small_cnn", NUM_CLASSES).eval()
    assert model(torch.randn(2, 3, size, size)).shape == (2, NUM_CLASSES)


def test_small_cnn_is_small():
    assert 50_000 <= count_params(build_model("small_cnn", NUM_CLASSES)) <= 300_000


# ---- WideResNet-28-k as in FixMatch ------------------------------------------------------------


def test_wrn28_2_parameter_count():
    model = build_model("wrn28_2", NUM_CLASSES)
    # 1,467,610 is the published count of the FixMatch WRN-28-2 for 10 classes ("1.5M").
    assert wrn_param_count(2, NUM_CLASSES) == 1_467_610
    assert count_params(model) == 1_467_610


def test_wrn28_8_parameter_count():
    model = build_model("wrn28_8", 100)
    assert count_params(model) == wrn_param_count(8, 100)
    assert count_params(model) == pytest.approx(23.4e6, rel=0.02)


def test_wrn_batchnorm_momentum_activation_and_init():
    model = build_model("wrn28_2", NUM_CLASSES)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == 3 * 4 * 2 + 1
    for norm in norms:
        assert norm.momentum == 0.001
        assert torch.equal(norm.weight, torch.ones_like(norm.weight))
        assert torch.equal(norm.bias, torch.zeros_like(norm.bias))
    assert all(m.negative_slope == 0.1 for m in model.modules() if isinstance(m, nn.LeakyReLU))
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    assert torch.equal(model.classifier.bias, torch.zeros(NUM_CLASSES))
    # kaiming_normal_(fan_out, leaky_relu with a=0): std = sqrt(2 / (out_channels * 3 * 3)).
    # block3's first conv maps 64 -> 128 channels, so fan_out and fan_in differ by a factor 2.
    conv = model.block3[0].conv1
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (conv.out_channels * 9)), rel=0.05)


# ---- ModelEMA ----------------------------------------------------------------------------------


def make_linear(weight, bias) -> nn.Linear:
    layer = nn.Linear(2, 1)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([weight]))
        layer.bias.copy_(torch.tensor([bias]))
    return layer


def test_ema_module_is_a_frozen_eval_copy():
    model = make_linear([1.0, 2.0], 0.0).train()
    ema = ModelEMA(model)
    assert not ema.module.training
    assert all(not p.requires_grad for p in ema.module.parameters())
    with torch.no_grad():
        model.weight.fill_(5.0)
    assert torch.equal(ema.module.weight, torch.tensor([[1.0, 2.0]]))  # a copy, not an alias


def test_ema_first_update_with_warmup_uses_two_elevenths():
    model = make_linear([1.0, 2.0], 0.0)
    ema = ModelEMA(model, decay=0.999, warmup="tf")
    no_warmup = ModelEMA(model, decay=0.999, warmup="none")
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[12.0, -9.0]]))
    ema.update(model, step=1)
    no_warmup.update(model, step=1)
    d = 2 / 11
    torch.testing.assert_close(ema.module.weight, d * torch.tensor([[1.0, 2.0]]) + (1 - d) * model.weight)
    torch.testing.assert_close(no_warmup.module.weight, 0.999 * torch.tensor([[1.0, 2.0]]) + 0.001 * model.weight)
    assert ema.get_decay(1) == pytest.approx(2 / 11)
    assert ema.get_decay(10_000) == 0.999


def test_ema_daso_warmup_and_averaged_buffers():
    # DASO: d = min(0.999, 1 - 1/(t+1)) with t counted from 0, so the first update copies and the
    # second takes half; its BN running statistics are averaged the same way, and the step counter
    # (an integer buffer) is copied.
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)).train()
    ema = ModelEMA(model, decay=0.999, warmup="daso", average_buffers=True)
    copying = ModelEMA(model, decay=0.999, warmup="daso")
    assert [ema.get_decay(t) for t in (1, 2, 4, 1000, 5000)] == pytest.approx([0.0, 0.5, 0.75, 0.999, 0.999])
    ema.update(model, step=1)
    old_mean = model[1].running_mean.clone()
    model(torch.randn(8, 2) * 3 + 5)  # moves the running statistics
    ema.update(model, step=2)
    copying.update(model, step=2)
    torch.testing.assert_close(ema.module[1].running_mean, 0.5 * old_mean + 0.5 * model[1].running_mean)
    torch.testing.assert_close(copying.module[1].running_mean, model[1].running_mean)
    assert ema.module[1].num_batches_tracked == model[1].num_batches_tracked == 1
    with torch.no_grad():
        model[0].weight.fill_(3.0)
    ema.update(model, step=1)  # the first update copies
    assert torch.equal(ema.module[0].weight, model[0].weight)
    with pytest.raises(ValueError, match="warm-up 'linear'"):
        ModelEMA(model, warmup="linear")


def test_ema_two_steps_by_hand():
    # decay 0.9 with warm-up: d_1 = min(0.9, 2/11) = 2/11, d_2 = min(0.9, 3/12) = 1/4.
    model = make_linear([1.0, 2.0], 0.0)
    ema = ModelEMA(model, decay=0.9, warmup="tf")
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[12.0, -9.0]]))
        model.bias.fill_(11.0)
    ema.update(model, step=1)  # 2/11 * [1, 2 | 0] + 9/11 * [12, -9 | 11] = [10, -7 | 9]
    torch.testing.assert_close(ema.module.weight, torch.tensor([[10.0, -7.0]]))
    torch.testing.assert_close(ema.module.bias, torch.tensor([9.0]))
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[14.0, 1.0]]))
        model.bias.fill_(1.0)
    ema.update(model, step=2)  # 1/4 * [10, -7 | 9] + 3/4 * [14, 1 | 1] = [13, -1 | 3]
    torch.testing.assert_close(ema.module.weight, torch.tensor([[13.0, -1.0]]))
    torch.testing.assert_close(ema.module.bias, torch.tensor([3.0]))


def test_ema_converges_to_a_fixed_model():
    ema = ModelEMA(build_model("small_cnn", NUM_CLASSES), decay=0.9)
    model = build_model("small_cnn", NUM_CLASSES)  # different random weights
    for step in range(1, 301):  # 0.9^300 ~ 2e-14
        ema.update(model, step)
    for ema_param, param in zip(ema.module.parameters(), model.parameters()):
        torch.testing.assert_close(ema_param, param, rtol=0, atol=1e-6)


def test_ema_copies_buffers():
    model = build_model("small_cnn", NUM_CLASSES).train()
    ema = ModelEMA(model)
    model(torch.randn(16, 3, 8, 8))  # moves BN running stats and num_batches_tracked
    ema.update(model, step=1)
    buffers = dict(model.named_buffers())
    assert buffers["blocks.0.1.num_batches_tracked"].item() == 1
    for name, ema_buffer in ema.module.named_buffers():
        assert torch.equal(ema_buffer, buffers[name]), name
    assert not ema.module.training


def test_ema_state_dict_round_trip():
    model = build_model("small_cnn", NUM_CLASSES)
    ema = ModelEMA(model, decay=0.99)
    for step in range(1, 4):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        ema.update(model, step)
    restored = ModelEMA(build_model("small_cnn", NUM_CLASSES), decay=0.99)
    restored.load_state_dict(ema.state_dict())
    for key, value in ema.state_dict().items():
        assert torch.equal(restored.state_dict()[key], value), key
    # The restored EMA keeps averaging exactly like the original.
    ema.update(model, 4)
    restored.update(model, 4)
    for a, b in zip(ema.module.parameters(), restored.module.parameters()):
        assert torch.equal(a, b)
    # The state is a plain model state_dict: it loads into an unwrapped model for evaluation.
    build_model("small_cnn", NUM_CLASSES).load_state_dict(ema.state_dict())


def test_ema_rejects_step_zero():
    ema = ModelEMA(nn.Linear(2, 1))
    with pytest.raises(ValueError, match="step"):
        ema.update(nn.Linear(2, 1), step=0)


def test_small_cnn_batchnorm_statistics_converge_in_a_short_run():
    # A CPU run is a few thousand steps: eval-mode statistics must follow the data within ~50 steps.
    model = build_model("small_cnn", NUM_CLASSES, in_channels=1).train()
    generator = torch.Generator().manual_seed(0)
    for _ in range(50):
        model(3.0 + torch.randn(16, 1, 8, 8, generator=generator))
    first_norm = model.blocks[0][1]
    batch_means = model.blocks[0][0](3.0 + torch.randn(256, 1, 8, 8, generator=generator)).mean(dim=(0, 2, 3))
    assert torch.allclose(first_norm.running_mean, batch_means.detach(), atol=0.1)
