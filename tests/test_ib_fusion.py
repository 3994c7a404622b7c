"""IB-IUMAD's fusion module (eq. 4-5) and losses (eq. 3, 8, 9): shapes, values, gradients, and that it learns."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from incad.data.sample import Batch
from incad.learners.ib_iumad.fusion import FUSION_NAMES, IBProjection, InformationBottleneckFusion, build_fusion
from incad.learners.ib_iumad.loss import (
    classifier_loss,
    depth_classifier_term,
    fused_classifier_term,
    fusion_loss,
    fusion_term,
    information_bottleneck_loss,
    information_bottleneck_term,
    rgb_classifier_term,
)

BATCH, TOKENS, DIM, HEADS, OBJECTS = 2, 196, 64, 4, 5


def tokens() -> torch.Tensor:
    return torch.randn(BATCH, TOKENS, DIM)


def batch_with(object_id: torch.Tensor) -> Batch:
    n = len(object_id)
    return Batch(
        image=torch.zeros(n, 3, 4, 4),
        mask=torch.zeros(n, 4, 4),
        label=torch.zeros(n, dtype=torch.long),
        object_id=object_id,
        defect_type=["good"] * n,
        path=["x.png"] * n,
    )


@pytest.mark.parametrize("name", FUSION_NAMES)
def test_every_fusion_operator_maps_two_token_sets_to_one(name):
    fusion = build_fusion(name, DIM, HEADS)
    assert fusion(tokens(), tokens()).shape == (BATCH, TOKENS, DIM)


def test_unknown_fusion_operator_names_the_allowed_ones():
    with pytest.raises(ValueError, match="add.*concat_fc.*linear_glu.*cross_attention"):
        build_fusion("concat", DIM, HEADS)


def test_cross_attention_keeps_the_first_argument_as_query():
    """Each output token depends on its own query token only (plus all keys), so permuting
    the first input permutes the output, whereas permuting the second leaves it unchanged."""
    fusion = build_fusion("cross_attention", DIM, HEADS).eval()
    first, second = tokens(), tokens()
    order = torch.randperm(TOKENS)
    out = fusion(first, second)
    torch.testing.assert_close(fusion(first[:, order], second), out[:, order])
    torch.testing.assert_close(fusion(first, second[:, order]), out)


@pytest.mark.parametrize("name", FUSION_NAMES)
def test_ibfm_returns_fused_and_bottlenecked_tokens_and_their_logits(name):
    ibfm = InformationBottleneckFusion(DIM, OBJECTS, fusion=name, num_heads=HEADS)
    outputs = ibfm(tokens(), tokens(), tokens(), tokens())
    assert set(outputs) == {"fused", "bottlenecked", "fused_logits", "bottlenecked_logits"}
    assert outputs["fused"].shape == outputs["bottlenecked"].shape == (BATCH, TOKENS, DIM)
    assert outputs["fused_logits"].shape == outputs["bottlenecked_logits"].shape == (BATCH, OBJECTS)
    assert (outputs["bottlenecked"] >= 0).all()  # eq. 5 ends with a ReLU


def test_ib_projection_bottleneck_defaults_to_half_the_width():
    projection = IBProjection(DIM)
    assert projection.encode(tokens()).shape == (BATCH, TOKENS, DIM // 2)
    assert IBProjection(DIM, bottleneck_dim=8).encode(tokens()).shape == (BATCH, TOKENS, 8)


def test_ib_projection_dropout_is_stochastic_in_train_and_off_in_eval():
    projection = IBProjection(DIM, dropout=0.5)
    fused = tokens()
    assert not torch.equal(projection(fused), projection(fused))
    projection.eval()
    torch.testing.assert_close(projection(fused), projection(fused), rtol=0, atol=0)


def test_kl_is_zero_for_identical_predictions_and_positive_otherwise():
    logits = torch.randn(4, OBJECTS)
    assert information_bottleneck_loss(logits, logits.clone()).item() == pytest.approx(0.0, abs=1e-6)
    assert information_bottleneck_loss(logits, torch.randn(4, OBJECTS)).item() > 0


def test_kl_matches_a_hand_computation_in_the_direction_of_eq_8():
    """p = P(Y|F_fu) = (3/4, 1/4), q = P(Y|F^g) = (1/2, 1/2); a second, identical row halves the batch mean."""
    fused = torch.tensor([[math.log(3.0), 0.0], [1.0, 2.0]])
    bottlenecked = torch.tensor([[0.0, 0.0], [1.0, 2.0]])
    kl_p_q = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    kl_q_p = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    assert information_bottleneck_loss(fused, bottlenecked).item() == pytest.approx(kl_p_q / 2, rel=1e-5)
    assert information_bottleneck_loss(bottlenecked, fused).item() == pytest.approx(kl_q_p / 2, rel=1e-5)
    assert kl_p_q != pytest.approx(kl_q_p, rel=1e-2)


def test_kl_optimises_the_bottleneck_towards_a_detached_fused_prediction():
    fused, bottlenecked = torch.randn(4, OBJECTS).requires_grad_(), torch.randn(4, OBJECTS).requires_grad_()
    information_bottleneck_loss(fused, bottlenecked).backward()
    assert fused.grad is None
    assert bottlenecked.grad.abs().sum() > 0
    information_bottleneck_loss(fused, bottlenecked, detach_fused=False).backward()
    assert fused.grad.abs().sum() > 0


def test_classifier_loss_is_cross_entropy():
    logits, object_id = torch.randn(6, OBJECTS), torch.randint(0, OBJECTS, (6,))
    torch.testing.assert_close(classifier_loss(logits, object_id), F.cross_entropy(logits, object_id))


def test_fusion_loss_averages_channels_tokens_and_batch():
    original = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [0.0, 0.0]]])
    # squared errors 1, 4, 9, 16 in sample 0 and 0 in sample 1: mean over all 8 entries = 30 / 8
    assert fusion_loss(original, torch.zeros_like(original)).item() == pytest.approx(3.75)
    a, b = tokens(), tokens()
    torch.testing.assert_close(fusion_loss(a, b), ((a - b) ** 2).mean())
    with pytest.raises(ValueError, match="equal shapes"):
        fusion_loss(a, b[:, :1])


def test_loss_terms_read_the_named_outputs():
    object_id = torch.tensor([0, 2, 1])
    outputs = {
        key: torch.randn(3, OBJECTS)
        for key in ("rgb/logits", "depth/logits", "fusion/fused_logits", "fusion/bottlenecked_logits")
    }
    batch = batch_with(object_id)
    torch.testing.assert_close(rgb_classifier_term(outputs, batch), F.cross_entropy(outputs["rgb/logits"], object_id))
    torch.testing.assert_close(depth_classifier_term(outputs, batch), F.cross_entropy(outputs["depth/logits"], object_id))
    torch.testing.assert_close(
        fused_classifier_term(outputs, batch), F.cross_entropy(outputs["fusion/fused_logits"], object_id)
    )
    torch.testing.assert_close(
        information_bottleneck_term(outputs, batch),
        information_bottleneck_loss(outputs["fusion/fused_logits"], outputs["fusion/bottlenecked_logits"]),
    )
    features = {"rgb/features": tokens(), "depth/features": tokens(), "fusion/reconstruction": torch.randn(BATCH, TOKENS, 2 * DIM)}
    target = torch.cat([features["rgb/features"], features["depth/features"]], dim=-1)
    torch.testing.assert_close(fusion_term(features, batch), fusion_loss(target, features["fusion/reconstruction"]))


@pytest.mark.parametrize("name", FUSION_NAMES)
def test_gradients_reach_every_ibfm_parameter(name):
    ibfm = InformationBottleneckFusion(DIM, OBJECTS, fusion=name, num_heads=HEADS)
    outputs = ibfm(tokens(), tokens(), tokens(), tokens())
    object_id = torch.tensor([1, 3])
    loss = (
        classifier_loss(outputs["fused_logits"], object_id)
        + information_bottleneck_loss(outputs["fused_logits"], outputs["bottlenecked_logits"])
        + fusion_loss(tokens(), outputs["bottlenecked"])
    )
    loss.backward()
    for parameter_name, parameter in ibfm.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, parameter_name


@pytest.fixture
def single_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a busy 2-core machine their
    synchronisation made the 70 training steps below ~80x slower (25 s instead of 0.3 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_joint_training_lowers_both_the_fused_classifier_loss_and_the_ib_loss(single_thread):
    """A freshly initialised head predicts near-uniformly from F_fu and F^g alike, so the KL
    starts near zero; a few CE-only steps first make P(Y|F_fu) confident and the KL large,
    then 60 Adam steps on CE + KL (eq. 8) bring both down."""
    torch.manual_seed(0)
    num_objects, batch, length, dim = 3, 12, 16, 32
    prototypes = torch.randn(num_objects, 4, length, dim)  # per object: rgb/depth at rec2/rec4
    object_id = torch.arange(batch) % num_objects

    def inputs() -> list[torch.Tensor]:
        return list((prototypes[object_id] + 0.5 * torch.randn(batch, 4, length, dim)).unbind(1))

    ibfm = InformationBottleneckFusion(dim, num_objects, num_heads=4)
    optimizer = torch.optim.Adam(ibfm.parameters(), lr=3e-3)
    held_out = inputs()

    def evaluate() -> tuple[float, float]:
        ibfm.eval()
        with torch.no_grad():
            outputs = ibfm(*held_out)
        ibfm.train()
        ce = classifier_loss(outputs["fused_logits"], object_id).item()
        return ce, information_bottleneck_loss(outputs["fused_logits"], outputs["bottlenecked_logits"]).item()

    def step(with_ib: bool) -> None:
        outputs = ibfm(*inputs())
        loss = classifier_loss(outputs["fused_logits"], object_id)
        if with_ib:
            loss = loss + information_bottleneck_loss(outputs["fused_logits"], outputs["bottlenecked_logits"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for _ in range(10):
        step(with_ib=False)
    ce_before, ib_before = evaluate()
    assert ib_before > 0.1
    for _ in range(60):
        step(with_ib=True)
    ce_after, ib_after = evaluate()
    assert ce_after < 0.5 * ce_before
    assert ib_after < 0.1 * ib_before
