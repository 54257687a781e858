"""The trainer's real FLUX path on a tiny, complete diffusers FLUX.1 Kontext folder built offline.

The folder (written with ``save_pretrained``, loadable by ``FluxKontextPipeline.from_pretrained``) holds a
tiny Kontext transformer (guidance embedding on, like [dev]), a 16-channel FLUX-style VAE (shift and scale,
no quant convs, 2x downsampling), a tiny CLIP text model + CLIP tokenizer and a tiny T5 encoder + T5
tokenizer (both tokenizers made from ``tokenizers`` objects, no download), and the flow-matching scheduler.
Checked: the VAE codec and the text encoder against diffusers computed by hand, then ``train()`` on the
folder (frozen base, LoRA + projector trained, content-hashed feature cache reused), then the export.
"""
from __future__ import annotations

import gc
import string
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("diffusers")
pytest.importorskip("transformers")
pytest.importorskip("accelerate")
pytest.importorskip("peft")

RES = 16  # image side; the VAE downsamples 2x -> 8 x 8 latents -> 4 x 4 packed tokens
LATENT_CHANNELS = 16
HIDDEN = 32  # transformer: 2 heads x 16
T5_DIM = 24  # joint_attention_dim (distinct from the CLIP width, so a swap of the two cannot pass)
CLIP_DIM = 40  # pooled_projection_dim
T5_TOKENS = 512  # FluxTextEncoder's max_sequence_length
SHIFT, SCALE = 0.1159, 0.3611  # FLUX.1's VAE shift_factor / scaling_factor
CPU = torch.device("cpu")


# ---------------------------------------------------------------- the tiny FLUX.1 Kontext folder

def _clip_tokenizer():
    """CLIP BPE over single letters (+ end-of-word forms), built in memory."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import CLIPTokenizerFast
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for c in string.ascii_lowercase:
            vocab[c + suffix] = len(vocab)
    bpe = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<|endoftext|>", end_of_word_suffix="</w>"))
    bpe.normalizer = normalizers.Lowercase()
    bpe.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])  # transformers 4 wants a Sequence
    bpe.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>", special_tokens=[("<|startoftext|>", 0), ("<|endoftext|>", 1)])
    return CLIPTokenizerFast(tokenizer_object=bpe, bos_token="<|startoftext|>", eos_token="<|endoftext|>",
                             unk_token="<|endoftext|>", pad_token="<|endoftext|>", model_max_length=77)


def _t5_tokenizer():
    """T5-style unigram (sentencepiece metaspace) over letters, built in memory."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(c, -3.0) for c in string.ascii_lowercase] + [("\u2581" + c, -2.5) for c in string.ascii_lowercase]
    unigram = Tokenizer(models.Unigram(pieces, unk_id=2))
    unigram.pre_tokenizer = pre_tokenizers.Metaspace()
    unigram.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=unigram, eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                           extra_ids=0, model_max_length=T5_TOKENS)


def build_tiny_kontext(folder: Path) -> Path:
    from diffusers import (AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxKontextPipeline,
                           FluxTransformer2DModel)
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4 * LATENT_CHANNELS, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=HIDDEN // 16, joint_attention_dim=T5_DIM, pooled_projection_dim=CLIP_DIM,
        guidance_embeds=True, axes_dims_rope=(4, 6, 6))
    torch.manual_seed(1)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                        latent_channels=LATENT_CHANNELS, norm_num_groups=4, sample_size=RES,
                        scaling_factor=SCALE, shift_factor=SHIFT, use_quant_conv=False, use_post_quant_conv=False)
    torch.manual_seed(2)
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=64, hidden_size=CLIP_DIM, intermediate_size=64,
                                        num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=77,
                                        projection_dim=CLIP_DIM, bos_token_id=0, eos_token_id=1, pad_token_id=1))
    torch.manual_seed(3)
    t5 = T5EncoderModel(T5Config(vocab_size=64, d_model=T5_DIM, d_kv=12, d_ff=48, num_layers=1, num_heads=2,
                                 relative_attention_num_buckets=8, dropout_rate=0.0, pad_token_id=0,
                                 eos_token_id=1, decoder_start_token_id=0))
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                                                max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
    pipe = FluxKontextPipeline(scheduler=scheduler, vae=vae, text_encoder=clip, tokenizer=_clip_tokenizer(),
                               text_encoder_2=t5, tokenizer_2=_t5_tokenizer(), transformer=transformer)
    pipe.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def kontext(tmp_path_factory) -> Path:
    return build_tiny_kontext(tmp_path_factory.mktemp("tiny-kontext") / "FLUX.1-Kontext-tiny")


@pytest.fixture(scope="module")
def image_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "x.png"
    rng = np.random.default_rng(7)
    Image.fromarray(rng.integers(0, 256, (RES, RES, 3), dtype=np.uint8)).save(path)
    return path


def test_the_folder_is_a_loadable_kontext_pipeline(kontext):
    from diffusers import FluxKontextPipeline
    pipe = FluxKontextPipeline.from_pretrained(kontext)
    assert pipe.transformer.config.guidance_embeds and pipe.transformer.config.in_channels == 4 * LATENT_CHANNELS
    assert pipe.vae.config.latent_channels == LATENT_CHANNELS and pipe.vae_scale_factor == 2
    assert pipe.tokenizer.model_max_length == 77
    ids = pipe.tokenizer_2("make it brighter", padding="max_length", max_length=T5_TOKENS, truncation=True,
                           return_tensors="pt").input_ids
    assert ids.shape == (1, T5_TOKENS) and len(set(ids[0].tolist())) > 3  # real tokens, then padding


# ---------------------------------------------------------------- encoders

@torch.no_grad()
def test_vae_codec_scales_and_shifts_like_diffusers_by_hand(kontext, image_file):
    from diffusers import AutoencoderKL

    from kontext_sliders.trainer.families.flux1 import FluxVaeCodec
    codec = FluxVaeCodec(str(kontext), RES, CPU, torch.float32)
    latent = codec.encode(image_file)
    assert latent.shape == (LATENT_CHANNELS, RES // 2, RES // 2) and latent.dtype == torch.float32

    vae = AutoencoderKL.from_pretrained(kontext, subfolder="vae").eval()
    assert (vae.config.shift_factor, vae.config.scaling_factor) == (SHIFT, SCALE)
    pixels = np.asarray(Image.open(image_file).convert("RGB"), dtype=np.float32) / 255.0
    x = torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0) * 2 - 1
    mode = vae.encode(x).latent_dist.mode()
    expected = (mode - SHIFT) * SCALE
    torch.testing.assert_close(latent, expected[0], rtol=1e-5, atol=1e-6)
    assert (latent - mode[0]).abs().max() > 0.05  # the shift and scale really were applied

    decoded = codec.decode(latent.unsqueeze(0))
    by_hand = vae.decode(latent.unsqueeze(0) / SCALE + SHIFT).sample.clamp(-1, 1)
    assert decoded.shape == (1, 3, RES, RES)
    torch.testing.assert_close(decoded, by_hand, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(decoded, vae.decode(mode).sample.clamp(-1, 1), rtol=1e-4, atol=1e-4)
    assert (decoded - vae.decode(latent.unsqueeze(0)).sample.clamp(-1, 1)).abs().max() > 1e-3  # unscaled != scaled

    assert codec._vae is not None
    codec.release()
    assert codec._vae is None


@torch.no_grad()
def test_text_encoder_equals_the_pipelines_encode_prompt(kontext):
    from diffusers import FluxKontextPipeline

    from kontext_sliders.trainer.families.flux1 import FluxTextEncoder
    encoder = FluxTextEncoder(str(kontext), CPU, torch.float32)
    features = encoder.encode("make it brighter")
    assert set(features) == {"context", "pooled"}
    assert features["context"].shape == (T5_TOKENS, T5_DIM) and features["pooled"].shape == (CLIP_DIM,)

    pipe = FluxKontextPipeline.from_pretrained(kontext, transformer=None, vae=None)
    context, pooled, _ = pipe.encode_prompt(prompt="make it brighter", prompt_2=None, device=CPU,
                                                   max_sequence_length=T5_TOKENS)
    torch.testing.assert_close(features["context"], context[0], rtol=0, atol=0)
    torch.testing.assert_close(features["pooled"], pooled[0], rtol=0, atol=0)
    # and from the raw models: T5's last hidden state over 512 padded tokens, CLIP's pooled output
    t5_ids = pipe.tokenizer_2("make it brighter", padding="max_length", max_length=T5_TOKENS, truncation=True,
                              return_tensors="pt").input_ids
    torch.testing.assert_close(features["context"], pipe.text_encoder_2(t5_ids)[0][0])
    clip_ids = pipe.tokenizer("make it brighter", padding="max_length", max_length=77, truncation=True,
                              return_tensors="pt").input_ids
    torch.testing.assert_close(features["pooled"], pipe.text_encoder(clip_ids).pooler_output[0])

    other = encoder.encode("make it darker")  # the features depend on the text
    assert (other["context"] - features["context"]).abs().max() > 1e-4
    assert (other["pooled"] - features["pooled"]).abs().max() > 1e-4

    loaded = weakref.ref(encoder._pipe)
    encoder.release()
    gc.collect()
    assert encoder._pipe is None and loaded() is None  # the text encoders are really gone from memory


# ---------------------------------------------------------------- train() on the folder

def _run_config(kontext: Path, data: Path, out: Path, cache: Path):
    from kontext_sliders.trainer.engine.config import config_from_dict
    return config_from_dict({
        "model": {"pretrained": str(kontext), "gradient_checkpointing": True},
        "lora": {"enabled": True, "rank": 4},
        "projector": {"strength_embed_dim": 16, "slider_dropout": 0.0},
        "data": {"trajectories": [str(data)], "text_encoder": "flux", "pixel_space": False, "resolution": RES,
                 "cache_dir": str(cache)},
        "optim": {"lr": 1e-3},
        "run": {"output_dir": str(out), "max_steps": 3, "batch_size": 2, "checkpoint_every": 3,
                "mixed_precision": "no", "progress": False, "sample_steps": 2, "validation_pairs": 1},
    })


def _lora_targets(transformer, targets) -> set[str]:
    """Module names peft's suffix match hits: the LoRA keys the export must name, and no other."""
    return {name for name, module in transformer.named_modules() if isinstance(module, torch.nn.Linear)
            and any(name == t or name.endswith("." + t) for t in targets)}


def test_train_on_the_pretrained_folder_then_reuse_the_cache_then_export(kontext, tmp_path, monkeypatch):
    from diffusers import FluxTransformer2DModel
    from safetensors.torch import load_file
    from test_trainer import brightness_trajectories

    from kontext_sliders.core.kontinuous.weights import load_kontinuous
    from kontext_sliders.trainer.engine import loop
    from kontext_sliders.trainer.methods.kontinuous import method as kontinuous_method
    from kontext_sliders.trainer.engine.checkpoint import latest_checkpoint
    from kontext_sliders.trainer.engine.config import OFFICIAL_LORA_TARGETS
    from kontext_sliders.trainer.engine.export import export_checkpoint
    from kontext_sliders.trainer.engine.features import FeatureCache
    from kontext_sliders.trainer.families.flux1 import FluxTextEncoder, FluxVaeCodec

    data = tmp_path / "data"
    data.mkdir()
    brightness_trajectories(data, n=2, frames=3, size=RES)
    cache_dir = tmp_path / "cache"

    built = []
    real_build_model = kontinuous_method.build_model

    def spying_build_model(*args, **kwargs):
        model = real_build_model(*args, **kwargs)
        built.append((model, {n: p.detach().clone() for n, p in model.named_parameters()}))
        return model

    monkeypatch.setattr(kontinuous_method, "build_model", spying_build_model)
    result = loop.train(_run_config(kontext, data, tmp_path / "run1", cache_dir))
    assert result.steps == 3 and np.isfinite(result.last_loss) and result.skipped == {}

    # the base is frozen and unchanged; only LoRA + projector are trainable, and they trained
    (model, before), = built
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("projector.") for n in trainable), sorted(trainable)
    base_file = load_file(next((kontext / "transformer").glob("*.safetensors")))
    base_now = {n.replace(".base_layer", ""): p for n, p in model.transformer.named_parameters() if "lora_" not in n}
    assert base_now.keys() == base_file.keys()
    for name, p in base_now.items():
        assert not p.requires_grad, name
        assert torch.equal(p.detach(), base_file[name]), name
    for name, p in model.named_parameters():
        if name in trainable:
            assert (p.detach() - before[name]).abs().max() > 1e-4, f"{name} did not train"
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().max() > 0 for p in lora_b)  # B starts at zero: every adapter learnt
    checkpoint = load_file(latest_checkpoint(tmp_path / "run1") / "trainable.safetensors")
    assert set(checkpoint) == trainable

    # the feature cache: every distinct image as a 16-channel latent, every instruction as T5 + CLIP features
    pngs = sorted(data.glob("*.png"))
    images = sorted((cache_dir / "image").rglob("*.safetensors"))
    texts = sorted((cache_dir / "text").rglob("*.safetensors"))
    assert len(images) == len({p.read_bytes() for p in pngs}) and len(texts) == 2
    assert load_file(images[0])["latent"].shape == (LATENT_CHANNELS, RES // 2, RES // 2)
    text = load_file(texts[0])
    assert text["context"].shape == (T5_TOKENS, T5_DIM) and text["pooled"].shape == (CLIP_DIM,)
    # the entry under an image's content-hash key is that image's latent (the trainer encodes in bf16)
    cache = FeatureCache(cache_dir)
    codec = FluxVaeCodec(str(kontext), RES, CPU, torch.bfloat16)
    key = cache.key(pngs[0].read_bytes(), codec.id)
    assert torch.equal(cache.get("image", key)["latent"], codec.encode(pngs[0]))
    assert (tmp_path / "run1" / "validation" / "step-00000003.png").is_file()  # decoded through the VAE

    # a second run, fresh output folder, same cache: the encoders are never called
    calls = []

    def no_encoding(self, what):
        calls.append(what)
        raise AssertionError("the cache should have answered")

    monkeypatch.setattr(FluxVaeCodec, "encode", no_encoding)
    monkeypatch.setattr(FluxTextEncoder, "encode", no_encoding)
    again = loop.train(_run_config(kontext, data, tmp_path / "run2", cache_dir))
    assert calls == [] and again.skipped == {} and again.steps == 3
    second = load_file(latest_checkpoint(tmp_path / "run2") / "trainable.safetensors")
    assert second.keys() == checkpoint.keys()
    for k in checkpoint:  # same seed, same cached features: the same run
        torch.testing.assert_close(second[k], checkpoint[k], rtol=1e-5, atol=1e-6, msg=k)

    # export: diffusers LoRA keys for exactly the targeted modules, a projector for this transformer's width
    weights = export_checkpoint(tmp_path / "run1", tmp_path / "slider.safetensors")
    loaded = load_kontinuous(tmp_path / "slider.safetensors")
    transformer = FluxTransformer2DModel.from_pretrained(kontext, subfolder="transformer")
    modules = _lora_targets(transformer, OFFICIAL_LORA_TARGETS)
    assert len(modules) == 12 + 3  # 1 double block (all 12 targets) + 1 single block (to_q/k/v)
    assert set(loaded.lora_state) == {f"transformer.{m}.lora_{h}.weight" for m in modules for h in "AB"}
    assert loaded.lora_rank == 4 and loaded.lora_alpha == 4.0
    for m in modules:
        linear = transformer.get_submodule(m)
        assert loaded.lora_state[f"transformer.{m}.lora_A.weight"].shape == (4, linear.in_features)
        assert loaded.lora_state[f"transformer.{m}.lora_B.weight"].shape == (linear.out_features, 4)
        torch.testing.assert_close(loaded.lora_state[f"transformer.{m}.lora_B.weight"],
                                   checkpoint[f"transformer.{m}.lora_B.default.weight"])
    pc = loaded.projector_config
    assert pc.hidden_size == HIDDEN and pc.out_dim == 2 * HIDDEN and pc.clip_dim == CLIP_DIM
    assert pc.strength_embed_dim == 16 and pc == weights.projector_config
    for k, v in loaded.projector_state.items():
        torch.testing.assert_close(v, checkpoint[f"projector.{k}"])
