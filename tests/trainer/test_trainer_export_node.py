"""Train 3 steps, export, load through the node: the node's prediction is the trainer model's."""
import pytest
import torch

import ks_fixtures as F

pytestmark = pytest.mark.comfyui
pytest.importorskip("accelerate")

SIGMA = 0.55


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    F.import_comfyui()
    from test_trainer import brightness_trajectories

    from kontext_sliders.trainer.engine.config import config_from_dict
    from kontext_sliders.trainer.engine.loop import train
    tmp = tmp_path_factory.mktemp("export")
    # a "pretrained" base: the tiny diffusers Flux (3-channel pixel latents here), frozen; LoRA + projector train
    base = F.diffusers_seeded(0)
    from diffusers import FluxTransformer2DModel
    config = dict(base.config)
    config.update(in_channels=12)
    base = F.seeded_(FluxTransformer2DModel.from_config(config), 5)
    base.save_pretrained(tmp / "base" / "transformer")
    data = tmp / "data"
    data.mkdir()
    brightness_trajectories(data, size=16)
    run_config = config_from_dict({
        "model": {"pretrained": str(tmp / "base"), "gradient_checkpointing": True, "guidance": 1.0},
        "lora": {"rank": 4, "alpha": 8.0},  # alpha != rank: the exported header alpha must be honoured
        "projector": {"strength_embed_dim": 16, "slider_dropout": 0.0},
        "data": {"trajectories": [str(data)], "pixel_space": True, "text_encoder": "learned", "resolution": 16},
        "optim": {"lr": 5e-3},
        "run": {"output_dir": str(tmp / "run"), "max_steps": 3, "batch_size": 2, "checkpoint_every": 3,
                "mixed_precision": "no", "progress": False, "sample_steps": 2, "validation_pairs": 1},
    })
    train(run_config)
    return tmp, run_config, base


@torch.no_grad()
def test_export_then_node_predicts_what_the_trainer_model_predicts(trained):
    from safetensors.torch import load_file

    from kontext_sliders.core.families.flux1 import diffusers_to_bfl
    from kontext_sliders.nodes.kontinuous import kontinuous_patched_model, load_for_nodes
    from kontext_sliders.trainer.engine.checkpoint import latest_checkpoint
    from kontext_sliders.trainer.engine.export import export_checkpoint
    from kontext_sliders.trainer.methods.kontinuous.model import build_model
    tmp, config, base = trained
    weights = export_checkpoint(tmp / "run", tmp / "slider.safetensors", tmp / "official")
    assert weights.lora_alpha == 8.0 and weights.lora_rank == 4 and len(weights.lora_state) == 2 * (12 * 3 + 3 * 2)

    # the trainer's model, as trained
    trainable = load_file(latest_checkpoint(tmp / "run") / "trainable.safetensors")
    instruction = "make it brighter"
    model = build_model(config, ["brighter please", instruction])
    model.load_state_dict(trainable, strict=False)
    model.eval()
    context, pooled = model.text_encoder([instruction])
    g = torch.Generator().manual_seed(3)
    x, source = torch.randn(2, 3, 16, 16, generator=g), torch.randn(1, 3, 16, 16, generator=g)
    lora_moved = (model.transformer.transformer_blocks[0].attn.to_q.lora_B.default.weight.abs().sum() > 0)
    assert lora_moved  # B starts at zero: 3 steps really trained the LoRA

    # ComfyUI: the same base weights, the exported file through the loader node's code, the Apply patch
    patcher = F.comfy_patcher(diffusers_to_bfl(base.state_dict()), out_channels=3)  # detection assumes 16
    positive = F.conditioning(context, pooled, source, patcher, guidance=1.0)
    for strength in (0.0, 0.6, 1.0):
        expected = model(x, source.expand(2, -1, -1, -1), torch.full((2,), strength), torch.full((2,), SIGMA),
                         context=context.expand(2, -1, -1), pooled=pooled.expand(2, -1))
        for path in (tmp / "slider.safetensors", tmp / "official"):
            loaded = load_for_nodes(str(path), path.name)
            node, _ = F.comfy_predict(kontinuous_patched_model(patcher, loaded, positive, [strength], 1.0),
                                      positive, x, SIGMA)
            torch.testing.assert_close(node, expected, rtol=1e-4, atol=1e-4, msg=lambda m: f"{path.name} {strength}: {m}")
    plain, _ = F.comfy_predict(patcher, positive, x, SIGMA)
    assert (plain - expected).abs().max() > 1e-3  # the comparison is not vacuous
