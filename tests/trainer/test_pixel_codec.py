"""The demo's pixel codec: RGB as it is, or an opponent basis whose chroma weighs more in the loss."""
import pytest
import torch

from kontext_sliders.trainer.engine.config import ConfigError, config_from_dict
from kontext_sliders.trainer.engine.features import PixelCodec, opponent_basis
from kontext_sliders.trainer.data.images import to_pil


def test_rgb_codec_is_the_identity_and_keeps_its_cache_id():
    codec = PixelCodec(16)
    rgb = torch.rand(2, 3, 4, 4) * 2 - 1
    assert codec.id == "pixels-16" and torch.equal(codec.to_latent(rgb), rgb) and torch.equal(codec.decode(rgb), rgb)


def test_opponent_codec_round_trips_and_weighs_chroma():
    codec = PixelCodec(16, 8.0)
    assert codec.id == "pixels-16-opponent8"  # another cache key: latents of another codec are never reused
    rgb = torch.rand(2, 3, 4, 4) * 2 - 1
    latent = codec.to_latent(rgb)
    torch.testing.assert_close(codec.decode(latent), rgb, atol=1e-6, rtol=0)
    grey = rgb[:, :1].expand(-1, 3, -1, -1)
    assert codec.to_latent(grey)[:, 1:].abs().max() < 1e-6  # grey has no chroma, exactly what desaturation asks
    # the same-sized error costs the loss ~50x more as a tint than as a shade (in RGB: the same)
    tint = torch.tensor([0.01, -0.01, 0.0]).view(1, 3, 1, 1)
    shade = torch.full((1, 3, 1, 1), 0.01)
    assert codec.to_latent(tint).pow(2).sum() > 25 * codec.to_latent(shade).pow(2).sum()
    torch.testing.assert_close(opponent_basis(1.0)[0], torch.full((3,), 1 / 3, dtype=torch.float64))


def test_codec_reads_the_files_it_writes(tmp_path):
    rgb = torch.rand(3, 8, 8) * 2 - 1
    to_pil(rgb).save(tmp_path / "a.png")
    codec = PixelCodec(8, 4.0)
    torch.testing.assert_close(codec.decode(codec.encode(tmp_path / "a.png")), rgb, atol=1 / 127, rtol=0)


@pytest.mark.parametrize("data,message", [({"pixel_space": False, "pixel_chroma_scale": 2.0}, "needs data.pixel_space"),
                                          ({"pixel_space": True, "pixel_chroma_scale": -1.0}, ">= 0")])
def test_config_refuses_a_chroma_scale_it_cannot_use(data, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"model": {"scratch": {}}, "data": data})
    with pytest.raises(ValueError, match=">= 0"):
        PixelCodec(8, -1.0)
