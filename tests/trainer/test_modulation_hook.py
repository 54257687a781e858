"""The trainer-side offset hook: applied in every double block, and kept under gradient checkpointing
(the official transformer silently drops its offsets when checkpointing is on)."""
import pytest
import torch

import ks_fixtures as F

pytest.importorskip("diffusers", reason="diffusers not installed: hook tests skipped")


def loss_and_projector_grads(checkpointing: bool):
    from kontext_sliders.core.kontinuous.projector import ProjectorConfig, SliderProjector
    from kontext_sliders.trainer.methods.kontinuous.modulation_hook import ModulationOffsetHooks
    model = F.diffusers_seeded(0).train()
    model.requires_grad_(False)
    if checkpointing:
        model.enable_gradient_checkpointing()
    projector = F.seeded_(SliderProjector(ProjectorConfig(out_dim=2 * F.HIDDEN, width=2 * F.HIDDEN)), 3, std=0.15)
    hooks = ModulationOffsetHooks(model)
    g = torch.Generator().manual_seed(4)
    x, ref = torch.randn(2, 16, 8, 8, generator=g), torch.randn(1, 16, 8, 8, generator=g)
    context, pooled = torch.randn(1, 6, F.CONTEXT_DIM, generator=g), torch.randn(1, 768, generator=g)
    hooks.offsets = projector(torch.tensor([0.2, 0.9]), pooled.expand(2, -1))
    with torch.enable_grad():
        v = F.diffusers_velocity(model, x, ref, context, pooled, sigma=0.5)
        loss = v.square().mean()
        loss.backward()  # offsets stay set until after backward: recomputed blocks see them too
    hooks.offsets = None
    with torch.no_grad():
        plain = F.diffusers_velocity(model, x, ref, context, pooled, sigma=0.5)
    return v.detach(), plain, {n: p.grad.clone() for n, p in projector.named_parameters()}


def test_offsets_apply_and_survive_gradient_checkpointing():
    v_off, plain, grads_off = loss_and_projector_grads(checkpointing=False)
    v_on, _, grads_on = loss_and_projector_grads(checkpointing=True)
    assert (v_off - plain).abs().max() > 1e-2  # the hook changes the prediction
    torch.testing.assert_close(v_on, v_off, rtol=0, atol=1e-6)
    for name in grads_off:
        assert grads_off[name].abs().max() > 0, name
        torch.testing.assert_close(grads_on[name], grads_off[name], rtol=1e-5, atol=1e-7)


def test_hook_refuses_a_model_without_double_blocks():
    from kontext_sliders.trainer.methods.kontinuous.modulation_hook import ModulationOffsetHooks
    with pytest.raises(TypeError, match="no Flux double-stream blocks"):
        ModulationOffsetHooks(torch.nn.Linear(2, 2))


def test_remove_restores_the_plain_model():
    from kontext_sliders.trainer.methods.kontinuous.modulation_hook import ModulationOffsetHooks
    model = F.diffusers_seeded(0).eval()
    g = torch.Generator().manual_seed(5)
    x, ref = torch.randn(1, 16, 8, 8, generator=g), torch.randn(1, 16, 8, 8, generator=g)
    context, pooled = torch.randn(1, 6, F.CONTEXT_DIM, generator=g), torch.randn(1, 768, generator=g)
    with torch.no_grad():
        before = F.diffusers_velocity(model, x, ref, context, pooled, 0.5)
        hooks = ModulationOffsetHooks(model)
        hooks.offsets = torch.ones(1, 2 * F.HIDDEN)
        hooked = F.diffusers_velocity(model, x, ref, context, pooled, 0.5)
        hooks.remove()
        after = F.diffusers_velocity(model, x, ref, context, pooled, 0.5)
    assert (hooked - before).abs().max() > 1e-2
    assert torch.equal(after, before)
