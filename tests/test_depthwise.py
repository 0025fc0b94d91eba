"""Depthwise convolutions compute in fp32 under CPU bf16 autocast (debiaspl/models/depthwise.py): torch's
bf16 channels_last kernel left the weight gradient of padding-only kernel taps unwritten on an AMD EPYC."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from debiaspl.models import build_model
from debiaspl.models.depthwise import Float32DepthwiseConv2d, keep_depthwise_in_float32

SMALL = "torchvision:shufflenet_v2_x0_5"


def test_only_plain_depthwise_convolutions_change_and_weights_keep_their_keys():
    model = nn.Sequential(nn.Conv2d(8, 8, 3, groups=8), nn.Conv2d(8, 16, 3, groups=2), nn.Conv2d(8, 8, 1),
                          nn.ConvTranspose2d(8, 8, 3, groups=8))
    keys = list(model.state_dict())
    assert keep_depthwise_in_float32(model) == 1
    assert [type(m) for m in model] == [Float32DepthwiseConv2d, nn.Conv2d, nn.Conv2d, nn.ConvTranspose2d]
    assert list(model.state_dict()) == keys
    assert type(copy.deepcopy(model)[0]) is Float32DepthwiseConv2d  # the EMA model is a deep copy


def test_outside_autocast_it_is_the_plain_convolution_and_inside_it_computes_in_fp32():
    torch.manual_seed(0)
    plain = nn.Conv2d(6, 6, 3, padding=1, groups=6)
    ours = copy.deepcopy(plain)
    keep_depthwise_in_float32(ours)
    x = torch.randn(2, 6, 5, 5)
    assert torch.equal(ours(x), plain(x))
    with torch.autocast("cpu", torch.bfloat16):
        assert plain(x).dtype == torch.bfloat16
        y = ours(x.bfloat16())
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, plain(x.bfloat16().float()), rtol=0, atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bf16_gradients_of_padding_only_taps_are_zero(seed):
    """8 x 8 images: stages 3 and 4 of shufflenet see 1 x 1 maps, where a 3 x 3 kernel's outer taps meet only
    padding, so their weight gradient is exactly 0. Torch's bf16 kernel left garbage there in 16 of 18
    convolutions (6 seeds) on the EPYC."""
    torch.manual_seed(seed)
    model = build_model(SMALL, 10, 1).to(memory_format=torch.channels_last).train()
    one_by_one = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and module.groups == module.in_channels > 1:
            module.register_forward_hook(lambda m, args, out: one_by_one.append(m) if args[0].shape[-2:] == (1, 1) else None)
    images = torch.randn(40, 1, 8, 8).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", torch.bfloat16):
        loss = F.cross_entropy(model(images).float(), torch.randint(0, 10, (40,)))
    loss.backward()
    assert len(one_by_one) >= 3 and all(type(conv) is Float32DepthwiseConv2d for conv in one_by_one)
    for conv in one_by_one:
        outer = conv.weight.grad[:, 0].clone()
        outer[:, 1, 1] = 0
        assert torch.equal(outer, torch.zeros_like(outer))
