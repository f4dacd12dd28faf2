"""StackedAdam: each member steps as torch's fused AdamW steps that member alone (its
weights decayed, its biases not); a skipped member does not move, not even by decay;
learning rates differ per member."""

from __future__ import annotations

import pytest
import torch

from pyppo.optim import StackedAdam, decay_groups

SHAPES = [(5, 7), (7,), (3, 2, 4)]


def members_and_singles(members: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    stacked = [torch.randn(members, *s, generator=gen) for s in SHAPES]
    singles = [[p[k].clone() for p in stacked] for k in range(members)]
    return stacked, singles


def grads_for(members: int, step: int):
    gen = torch.Generator().manual_seed(100 + step)
    return [torch.randn(members, *s, generator=gen) for s in SHAPES]


@pytest.mark.parametrize("weight_decay", [0.0, 5.0])
@pytest.mark.parametrize("members", [1, 3])
def test_each_member_steps_as_fused_adamw_steps_it_alone(members, weight_decay):
    stacked, singles = members_and_singles(members)
    params = [torch.nn.Parameter(p) for p in stacked]
    lrs = [1e-3 * (k + 1) for k in range(members)]
    stacked_adam = StackedAdam(params, lrs, eps=1e-5, weight_decay=weight_decay)
    single_params = [[torch.nn.Parameter(p) for p in one] for one in singles]
    # Weights decay, biases do not: (5, 7) and (3, 2, 4) per member are weights, (7,) a bias.
    fused = [
        torch.optim.AdamW(
            [
                {"params": [p for p in ps if p.dim() > 1], "weight_decay": weight_decay},
                {"params": [p for p in ps if p.dim() == 1], "weight_decay": 0.0},
            ],
            lr=lr,
            eps=1e-5,
            fused=True,
        )
        for ps, lr in zip(single_params, lrs, strict=True)
    ]
    for step in range(5):
        grads = grads_for(members, step)
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        stacked_adam.step()
        for k in range(members):
            for p, g in zip(single_params[k], grads, strict=True):
                p.grad = g[k].clone()
            fused[k].step()
    for k in range(members):
        for p, single in zip(params, single_params[k], strict=True):
            torch.testing.assert_close(p.detach()[k], single.detach(), rtol=1e-5, atol=1e-7)


def test_a_skipped_member_does_not_move_and_the_others_do_not_notice():
    stacked, _ = members_and_singles(3, seed=1)
    params = [torch.nn.Parameter(p.clone()) for p in stacked]
    twin = [torch.nn.Parameter(p.clone()) for p in stacked]
    adam = StackedAdam(params, 1e-2, weight_decay=1.0)
    twin_adam = StackedAdam(twin, 1e-2, weight_decay=1.0)
    skip = torch.tensor([False, True, False])
    for step in range(4):
        grads = grads_for(3, step)
        for p, q, g in zip(params, twin, grads, strict=True):
            p.grad, q.grad = g.clone(), g.clone()
        before = [p.detach()[1].clone() for p in params]
        adam.step(skip if step == 2 else None)
        twin_adam.step()
        if step == 2:
            assert all(torch.equal(p.detach()[1], b) for p, b in zip(params, before, strict=True))
    assert adam.step_count.tolist() == [4.0, 3.0, 4.0]
    for p, q in zip(params, twin, strict=True):
        assert torch.equal(p.detach()[0], q.detach()[0]) and torch.equal(
            p.detach()[2], q.detach()[2]
        )
        assert not torch.equal(p.detach()[1], q.detach()[1])  # one step fewer


def test_stacked_adam_refuses_parameters_without_the_member_dimension():
    with pytest.raises(ValueError, match="member dimension first"):
        StackedAdam([torch.zeros(3, 2), torch.zeros(2, 2)], 1e-3)
    with pytest.raises(ValueError, match="one per member"):
        StackedAdam([torch.zeros(3, 2)], [1e-3, 1e-3])
    with pytest.raises(ValueError, match="weight_decay"):
        StackedAdam([torch.zeros(3, 2)], 1e-3, weight_decay=-1.0)


def test_a_state_saved_without_weight_decay_resumes_without_it():
    params = [torch.nn.Parameter(torch.ones(2, 3))]
    adam = StackedAdam(params, 1e-3, weight_decay=5.0)
    state = adam.state_dict()
    assert state["weight_decay"] == 5.0
    del state["weight_decay"]  # as saved before the optimizer had weight decay
    adam.load_state_dict(state)
    assert adam.weight_decay == 0.0


def test_a_single_models_groups_decay_its_weights_and_not_its_biases():
    model = torch.nn.Sequential(torch.nn.Conv1d(2, 3, 5), torch.nn.Flatten(), torch.nn.Linear(6, 1))
    decayed, kept = decay_groups(model, 2.0)
    assert decayed["weight_decay"] == 2.0 and kept["weight_decay"] == 0.0
    weights = [model[0].weight, model[2].weight]
    biases = [model[0].bias, model[2].bias]
    assert [id(p) for p in decayed["params"]] == [id(p) for p in weights]
    assert [id(p) for p in kept["params"]] == [id(p) for p in biases]
