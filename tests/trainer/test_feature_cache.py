"""The trainer's feature cache: what ``get`` keeps in memory is what is on disk, within its byte budget."""
import torch

from kontext_sliders.trainer.engine.features import FeatureCache


def _entry(value: float, n: int = 256) -> dict[str, torch.Tensor]:
    return {"latent": torch.full((n,), value)}  # 1 KiB in float32


def test_get_reads_back_what_put_wrote_and_a_new_put_replaces_what_memory_held(tmp_path):
    cache = FeatureCache(tmp_path)
    assert cache.get("image", "a" * 64) is None and not cache.has("image", "a" * 64)
    cache.put("image", "a" * 64, _entry(1.0))
    first = cache.get("image", "a" * 64)
    assert torch.equal(first["latent"], _entry(1.0)["latent"]) and cache.has("image", "a" * 64)
    assert cache.get("image", "a" * 64) is first  # the second read comes from memory
    cache.put("image", "a" * 64, _entry(2.0))
    assert torch.equal(cache.get("image", "a" * 64)["latent"], _entry(2.0)["latent"])
    # another cache over the same folder reads the same values from disk
    assert torch.equal(FeatureCache(tmp_path).get("image", "a" * 64)["latent"], _entry(2.0)["latent"])


def test_memory_keeps_the_most_recently_read_entries_within_its_budget(tmp_path):
    cache = FeatureCache(tmp_path, memory_bytes=3 * 1024)
    keys = [f"{i:064x}" for i in range(5)]
    for i, key in enumerate(keys):
        cache.put("image", key, _entry(float(i)))
    for key in keys[:3]:
        cache.get("image", key)
    cache.get("image", keys[0])  # now the most recent: keys[1] is the least
    cache.get("image", keys[3])  # over budget: keys[1] goes
    held = {k for _, k in cache._memory}
    assert held == {keys[0], keys[2], keys[3]} and cache._held == 3 * 1024
    for i, key in enumerate(keys):  # evicted or not, every value reads back right
        assert torch.equal(cache.get("image", key)["latent"], _entry(float(i))["latent"])
    big = FeatureCache(tmp_path, memory_bytes=512)  # an entry over the whole budget is never held
    assert torch.equal(big.get("image", keys[4])["latent"], _entry(4.0)["latent"]) and not big._memory
