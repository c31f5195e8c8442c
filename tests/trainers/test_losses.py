"""A-ViT losses: ponder, Gaussian depth prior, KL prior on the halting distribution."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from search_spaces.adaptive import LossTerm
from search_spaces.output import ModelOutput
from search_spaces.policies.halting import Halting, ponder_weight
from search_spaces.vit import ViTConfig, build
from trainers.losses import (
    TERMS,
    adaptive_objective,
    depth_prior_loss,
    gaussian_depth_prior,
    halting_prior_loss,
    objective_for,
    ponder_loss,
    register_term,
    term_loss,
)

torch.set_num_threads(1)


def test_ponder_loss_is_weight_times_mean_rho() -> None:
    rho = torch.tensor([[2.0, 3.25, 4.125], [1.0, 2.0, 3.0]])
    # mean = (2 + 3.25 + 4.125 + 1 + 2 + 3) / 6 = 15.375 / 6 = 2.5625
    assert ponder_loss(rho, weight=0.1).item() == pytest.approx(0.25625, abs=1e-7)
    assert ponder_loss(rho, weight=0.0).item() == 0.0


def test_ponder_weight_scales_the_paper_value_to_depth() -> None:
    assert ponder_weight(None, 6) == 1e-3  # 5e-4 * 12 / 6
    assert ponder_weight(None, 12) == 5e-4
    assert ponder_weight(0.02, 6) == 0.02 and ponder_weight(0.0, 6) == 0.0


def test_gaussian_prior_hand_value_for_depth_3() -> None:
    # blocks 1, 2, 3 around mean 2, std 1: exp(-0.5), 1, exp(-0.5), over 1 + 2 exp(-0.5)
    e = math.exp(-0.5)
    expected = torch.tensor([e, 1.0, e]) / (1 + 2 * e)
    prior = gaussian_depth_prior(3, mean=2.0, std=1.0)
    torch.testing.assert_close(prior, expected, rtol=0, atol=1e-7)
    assert prior[0].item() == pytest.approx(0.2740686, abs=1e-6)
    assert prior.dtype == torch.float32


@pytest.mark.parametrize(("depth", "mean", "std"), [(12, 8.0, 1.0), (12, 7.6, 1.0),
                                                    (6, 2.2, 0.5), (4, 4.0, 2.0)])
def test_gaussian_prior_sums_to_one_and_peaks_at_the_rounded_mean(depth, mean, std) -> None:
    prior = gaussian_depth_prior(depth, mean=mean, std=std)
    assert prior.shape == (depth,)
    assert prior.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert (prior > 0).all()
    assert prior.argmax().item() + 1 == round(mean)  # block k is index k - 1


def test_gaussian_prior_is_symmetric_around_an_integer_mean() -> None:
    prior = gaussian_depth_prior(9, mean=5.0, std=1.5)
    torch.testing.assert_close(prior, prior.flip(0), rtol=0, atol=1e-7)
    assert prior[0] < prior[2] < prior[4]


@pytest.mark.parametrize(("depth", "std"), [(0, 1.0), (3, 0.0), (3, -1.0)])
def test_gaussian_prior_rejects_bad_arguments(depth: int, std: float) -> None:
    with pytest.raises(ValueError, match="depth"):
        gaussian_depth_prior(depth, mean=1.0, std=std)


def test_prior_loss_is_zero_when_every_row_is_the_target() -> None:
    target = gaussian_depth_prior(4, mean=3.0)
    distribution = target.repeat(5, 1)
    assert abs(halting_prior_loss(distribution, target=target, weight=1.0).item()) < 1e-7
    # rows are normalised after the batch mean: a scaled copy is the same distribution
    assert abs(halting_prior_loss(0.3 * distribution, target=target, weight=1.0).item()) < 1e-7


def test_prior_loss_uses_the_mean_over_all_images() -> None:
    target = torch.tensor([0.25, 0.75])
    distribution = torch.tensor([[0.5, 0.5], [0.0, 1.0]])  # rows differ, their mean is target
    assert abs(halting_prior_loss(distribution, target=target, weight=1.0).item()) < 1e-7
    # the official code's mean over images 1.. (dropping image 0) would give q = (0, 1)
    dropped = halting_prior_loss(distribution[1:], target=target, weight=1.0).item()
    assert dropped > 1.0


def test_prior_loss_matches_a_hand_kl_on_two_blocks() -> None:
    target = torch.tensor([0.5, 0.5])
    distribution = torch.tensor([[0.2, 0.6], [0.4, 0.2]])
    # batch mean (0.3, 0.4) -> q = (3/7, 4/7); KL(target || q) = 0.5 ln(7/6) + 0.5 ln(7/8)
    #   = 0.5 ln(49/48); weight 2 -> ln(49/48)
    loss = halting_prior_loss(distribution, target=target, weight=2.0)
    assert loss.item() == pytest.approx(math.log(49 / 48), abs=1e-6)  # fp32
    assert loss.item() > 0.02


def test_prior_loss_is_positive_away_from_the_target() -> None:
    target = gaussian_depth_prior(4, mean=3.0)
    early = torch.tensor([[0.9, 0.05, 0.03, 0.02], [0.8, 0.1, 0.05, 0.05]])
    late = torch.tensor([[0.05, 0.2, 0.45, 0.3], [0.05, 0.3, 0.4, 0.25]])  # near target
    assert halting_prior_loss(early, target=target, weight=1.0) > 1.0
    assert 1e-4 < halting_prior_loss(late, target=target, weight=1.0).item() < 0.05


def test_prior_loss_is_finite_and_differentiable_with_zeros() -> None:
    target = gaussian_depth_prior(3, mean=2.0)
    distribution = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.0, 0.0]], requires_grad=True)
    loss = halting_prior_loss(distribution, target=target, weight=1.0)
    assert torch.isfinite(loss) and loss.item() > 1.0  # log of the 1e-8 floor for q = 0
    loss.backward()
    assert torch.isfinite(distribution.grad).all() and distribution.grad.abs().max() > 0
    # a target with zeros (a block the prior never wants) is finite too
    zero_target = torch.tensor([0.0, 1.0, 0.0])
    other = torch.tensor([[0.2, 0.5, 0.3]], requires_grad=True)
    loss = halting_prior_loss(other, target=zero_target, weight=1.0)
    assert loss.item() == pytest.approx(-math.log(0.5), abs=1e-6)
    loss.backward()
    assert torch.isfinite(other.grad).all()


HALTING = ViTConfig(img_size=12, patch_size=4, embed_dim=16, depth=4, num_heads=2,
                    token_policy="halting", halt_beta=-1.0, halt_target=0.5, halt_ponder=None,
                    halt_prior=0.1)


def test_halting_objective_is_cross_entropy_plus_ponder_plus_prior() -> None:
    torch.manual_seed(0)
    model = build(HALTING, num_classes=5, in_chans=3).train()
    x = torch.randn(6, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    out = model(x)
    assert isinstance(out, ModelOutput)
    loss = objective_for(Halting(HALTING), label_smoothing=0.1)(out, y)
    # by hand: target = Gaussian over blocks 1..4 around 2; alpha_p = 5e-4 * 12 / 4 = 1.5e-3
    k = torch.arange(1.0, 5.0)
    target = torch.exp(-0.5 * (k - 2.0) ** 2)
    target = target / target.sum()
    q = out.aux["halt_distribution"].detach().mean(0)
    q = q / q.sum()
    kl = (target * (target / q).log()).sum()
    task = F.cross_entropy(out.logits.detach(), y, label_smoothing=0.1)
    ponder = 1.5e-3 * out.aux["rho"].detach().mean()
    assert ponder.item() > 1.5e-3  # rho >= 1 for every token
    assert kl.item() > 1e-3  # the prior term is not negligible here
    assert loss.item() == pytest.approx((task + ponder + 0.1 * kl).item(), abs=1e-6)
    assert torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    # the same loss from the config, without label smoothing
    plain = objective_for(HALTING)(out, y)
    ce = F.cross_entropy(out.logits.detach(), y)
    assert plain.item() == pytest.approx((ce + ponder + 0.1 * kl).item(), abs=1e-6)


def test_halting_objective_needs_a_model_output() -> None:
    loss = objective_for(HALTING)
    with pytest.raises(TypeError, match="ModelOutput"):
        loss(torch.zeros(2, 5), torch.tensor([0, 1]))


def test_objective_for_only_halting_configs() -> None:
    assert objective_for(HALTING.replace(token_policy="static")) is None
    assert objective_for(object()) is None  # a family without token policies
    assert objective_for(None) is None
    assert callable(objective_for(HALTING))


def test_halting_declares_its_terms_by_name() -> None:
    terms = Halting(HALTING).loss_terms()
    assert terms == (LossTerm("ponder", ("rho",), 1.5e-3),
                     LossTerm("depth_prior", ("halt_distribution",), 0.1, {"mean": 2.0}))
    assert all(t.kind in TERMS for t in terms)


def test_depth_prior_loss_is_the_kl_to_the_gaussian_of_its_depth() -> None:
    dist = torch.rand(3, 6, generator=torch.Generator().manual_seed(0))
    target = gaussian_depth_prior(6, mean=2.5, std=0.7)
    assert depth_prior_loss(dist, mean=2.5, std=0.7, weight=0.3).item() == pytest.approx(
        halting_prior_loss(dist, target=target, weight=0.3).item(), abs=1e-7)


def test_terms_read_aux_and_labels_and_a_registered_term_is_used() -> None:
    out = ModelOutput(torch.zeros(2, 3), {"x": torch.tensor([1.0, 3.0])})
    labels = torch.tensor([0, 2])
    register_term("test_weighted_sum", lambda x, y, *, weight, shift: weight * (
        x.sum() + y.sum() + shift))
    term = LossTerm("test_weighted_sum", ("x", "labels"), 0.5, {"shift": 1.0})
    assert term_loss(term, out, labels).item() == 0.5 * (4 + 2 + 1)
    ce = F.cross_entropy(out.logits, labels)
    total = adaptive_objective([term, term])(out, labels)
    assert total.item() == pytest.approx(ce.item() + 2 * 3.5, abs=1e-6)
    with pytest.raises(ValueError, match="registered already"):
        register_term("test_weighted_sum", lambda x, *, weight: x)
    with pytest.raises(KeyError, match="not known"):
        term_loss(LossTerm("no_such_term", ("x",), 1.0), out, labels)
