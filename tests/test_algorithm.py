import math

import pytest
import torch

from conftest import assert_same_step_output
from debiaspl.algorithm import (add_adaptive_margin, debias_logits, debiaspl_step, fixmatch_step,
                                make_pseudo_labels, masked_unlabeled_loss, uniform_class_marginal,
                                update_class_marginal)

OPTIONS = {"threshold": 0.6, "unlabeled_weight": 1.5, "marginal_momentum": 0.9}


def test_skewed_batch_moves_the_marginal_toward_the_skew():
    # The bug one public implementation shipped: a mean over all N*C entries is always 1/C.
    q = uniform_class_marginal(4)
    probs = torch.tensor([[0.7, 0.1, 0.1, 0.1]] * 8)
    new = update_class_marginal(q, probs, momentum=0.5)
    assert torch.allclose(new, torch.tensor([0.475, 0.175, 0.175, 0.175]))
    assert new[0] > q[0] and torch.isclose(new.sum(), torch.tensor(1.0))
    assert torch.equal(q, torch.full((4,), 0.25))  # the input is not mutated


def test_marginal_update_stays_float32_under_autocast():
    # Everything arrives in bf16, as it would from a bf16 model; the marginal must still move.
    q = uniform_class_marginal(10).bfloat16()
    logits = torch.zeros(64, 10, dtype=torch.bfloat16)
    logits[:, 0] = 20
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = debiaspl_step(logits[:4], torch.zeros(4, dtype=torch.long), logits, logits, q, threshold=0.95,
                            unlabeled_weight=1.0, marginal_momentum=0.999, tau=0.4)
        new = update_class_marginal(q, torch.softmax(logits, 1), momentum=0.999)
    for marginal in (out.class_marginal, new):
        assert marginal.dtype == torch.float32
        # 0.1 -> 0.1009: a change bf16 cannot represent (its spacing near 0.1 is ~0.0005).
        assert math.isclose(marginal[0].item(), 0.999 * 0.1 + 0.001, rel_tol=1e-3)


def test_debias_and_margin_by_hand():
    logits = torch.tensor([[2.0, 1.0, 0.0]])
    q = torch.tensor([0.5, 0.25, 0.25])
    expected = torch.tensor([[2.0 - 0.4 * math.log(0.5), 1.0 - 0.4 * math.log(0.25), -0.4 * math.log(0.25)]])
    assert torch.allclose(debias_logits(logits, q, 0.4), expected)
    assert torch.allclose(add_adaptive_margin(logits, q, 0.4), 2 * logits - expected)


def test_debiasing_flips_a_head_biased_pseudo_label():
    # Head class 0 wins by a little on raw logits; with q_hat heavily on class 0 the debiased
    # label is class 1.
    logits = torch.tensor([[1.2, 1.0, -3.0]])
    q = torch.tensor([0.8, 0.1, 0.1])
    assert make_pseudo_labels(logits, 0.0).labels.item() == 0
    assert make_pseudo_labels(debias_logits(logits, q, 0.4), 0.0).labels.item() == 1


def test_masked_loss_divides_by_all_samples():
    logits = torch.tensor([[3.0, 0.0], [0.0, 3.0], [1.0, 1.0], [0.0, 0.0]])
    labels = torch.tensor([0, 1, 0, 1])
    mask = torch.tensor([1.0, 1.0, 0.0, 0.0])
    ce = -math.log(math.exp(3) / (math.exp(3) + 1))
    assert math.isclose(masked_unlabeled_loss(logits, labels, mask).item(), 2 * ce / 4, rel_tol=1e-6)


def _logits(seed: int, n: int = 12, c: int = 5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, generator=g) * 3


def test_debiaspl_step_by_hand():
    z_lb, z_w, z_s = _logits(0, 4), _logits(1), _logits(2)
    y = torch.tensor([0, 1, 2, 3])
    q = torch.tensor([0.4, 0.3, 0.1, 0.1, 0.1])
    out = debiaspl_step(z_lb, y, z_w, z_s, q, tau=0.5, **OPTIONS)
    # 1. pseudo-labels from the debiased weak logits with the old q_hat
    p_deb = torch.softmax(z_w - 0.5 * q.log(), dim=1)
    assert torch.equal(out.pseudo_labels, p_deb.argmax(1))
    assert torch.equal(out.mask, (p_deb.max(1).values >= 0.6).float())
    # 2. q_hat from the raw weak softmax
    q_new = 0.9 * q + 0.1 * torch.softmax(z_w, dim=1).mean(0)
    assert torch.allclose(out.class_marginal, q_new)
    # 3. adaptive margin with the updated q_hat
    ce = torch.nn.functional.cross_entropy(z_s + 0.5 * q_new.log(), p_deb.argmax(1), reduction="none")
    assert torch.allclose(out.loss_unsup, (ce * out.mask).mean())
    sup = torch.nn.functional.cross_entropy(z_lb, y)
    assert torch.allclose(out.loss, sup + 1.5 * out.loss_unsup)


def test_tau_zero_debiaspl_equals_fixmatch_bit_for_bit():
    z_lb = _logits(3, 4).requires_grad_()
    z_s = _logits(4).requires_grad_()
    z_w = _logits(5)
    y = torch.tensor([1, 0, 3, 2])
    q = torch.tensor([0.5, 0.2, 0.1, 0.1, 0.1])
    a = fixmatch_step(z_lb, y, z_w, z_s, q, **OPTIONS)
    grads_a = torch.autograd.grad(a.loss, [z_lb, z_s])
    b = debiaspl_step(z_lb, y, z_w, z_s, q, tau=0.0, **OPTIONS)
    grads_b = torch.autograd.grad(b.loss, [z_lb, z_s])
    assert_same_step_output(a, b)
    for x, y_ in zip(grads_a, grads_b):
        assert torch.equal(x, y_)
    # and tau > 0 really changes the loss
    c = debiaspl_step(z_lb, y, z_w, z_s, q, tau=0.4, **OPTIONS)
    assert not torch.equal(a.loss, c.loss)


def test_weak_view_gets_no_gradient():
    z_w = _logits(6).requires_grad_()
    out = debiaspl_step(_logits(7, 4), torch.tensor([0, 1, 2, 3]), z_w, _logits(8), uniform_class_marginal(5),
                        tau=0.4, **OPTIONS)
    assert not out.class_marginal.requires_grad and not out.probs_pseudo.requires_grad
    with pytest.raises(RuntimeError):
        torch.autograd.grad(out.loss, z_w)


def test_fifty_chained_steps_follow_the_official_order():
    # main_DebiasPL.py's order: label from q_hat before the step, update q_hat from the plain weak
    # softmax of the whole batch, margin with the updated q_hat; q_hat carried from step to step
    import torch.nn.functional as F
    torch.manual_seed(0)
    classes, tau, momentum, threshold = 5, 0.4, 0.9, 0.5
    bias = torch.tensor([2.0, 1.0, 0.0, -1.0, -2.0])  # a head-biased classifier
    reference = torch.full((classes,), 1.0 / classes)
    q_hat = uniform_class_marginal(classes)
    for _ in range(50):
        weak, strong = torch.randn(8, classes) * 2 + bias, torch.randn(8, classes) * 2 + bias
        labeled, targets = torch.randn(4, classes), torch.randint(0, classes, (4,))
        confidence, labels = F.softmax(weak - tau * reference.log(), dim=1).max(dim=1)
        mask = (confidence >= threshold).float()
        reference = momentum * reference + (1 - momentum) * F.softmax(weak, dim=1).mean(0)
        unlabeled = (F.cross_entropy(strong + tau * reference.log(), labels, reduction="none") * mask).mean()
        out = debiaspl_step(labeled, targets, weak, strong, q_hat, threshold=threshold, unlabeled_weight=1.0,
                            marginal_momentum=momentum, tau=tau)
        q_hat = out.class_marginal
        assert torch.equal(out.pseudo_labels, labels) and torch.equal(out.mask, mask)
        torch.testing.assert_close(q_hat, reference, rtol=0, atol=1e-7)
        torch.testing.assert_close(out.loss, F.cross_entropy(labeled, targets) + unlabeled, rtol=0, atol=1e-6)
    assert q_hat[0] > 0.4 and q_hat[-1] < 0.05  # it tracked the bias
