"""A tiny randomly initialised Llama generates the same greedy tokens with TierKVCache (hot tier
small enough that blocks go to warm and cold and come back) as with DynamicCache. On CPU the hot
tier is the emulated accelerator; where torch sees a GPU the same test runs the model on it, with
the hot tier in that GPU's memory through the CUDA driver (skipped elsewhere, e.g. in CI)."""

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed: the transformers cache test needs it")
transformers = pytest.importorskip("transformers", reason="transformers is not installed")

from packaging.version import Version  # noqa: E402  (transformers depends on packaging)

if Version(transformers.__version__) < Version("5.0"):
    pytest.skip(f"TierKVCache needs transformers >= 5 (layered Cache API); found {transformers.__version__}",
                allow_module_level=True)

from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM  # noqa: E402

from tierkv.hf import TierKVCache  # noqa: E402


def tiny_llama(dtype):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=256, hidden_size=256, intermediate_size=512, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=512)
    return LlamaForCausalLM(config).to(dtype).eval()


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                   reason="torch sees no GPU"))]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_greedy_tokens_match_dynamic_cache(tmp_path, dtype, device):
    model = tiny_llama(dtype).to(device)
    prompt = torch.randint(0, 256, (2, 21), generator=torch.Generator().manual_seed(1)).to(device)
    arguments = dict(max_new_tokens=48, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        reference = model.generate(prompt, past_key_values=DynamicCache(), **arguments)
        # 69 tokens, window 8, blocks of 4: 15 blocks per layer and row are stored; 2 rows x 3 layers
        # = 90 blocks against 2 hot + 32 warm, so most live in cold and come back for every step.
        cache = TierKVCache(model.config, hot_window=8, tokens_per_block=4, hot_blocks=2, warm_blocks=32,
                            cold_blocks=256, cache_dir=tmp_path / "cold", buffered_fallback=True, cpu_threads=1)
        with cache:
            tokens = model.generate(prompt, past_key_values=cache, **arguments)
            stats = cache.stats()
    assert torch.equal(tokens, reference), "TierKVCache changed the greedy tokens"
    if device == "cpu":
        assert stats["accelerator_is_emulated"], "a CPU model's hot tier is the emulation, and says so"
    else:
        assert not stats["accelerator_is_emulated"], "a GPU model's hot tier is that GPU, not the emulation"
        assert stats["bytes_host_to_device"] > 0 and stats["bytes_device_to_host"] > 0, stats
    assert stats["stored_blocks"] >= 2 * 3 * 15
    assert stats["cold"]["resident_blocks"] > 0 and stats["bytes_nvme_read"] > 0, stats
    assert stats["warm"]["hits"] > 0, stats
    print(f"\n{device} {dtype}: {tokens.shape[1] - prompt.shape[1]} new tokens identical; stored {stats['stored_blocks']} "
          f"blocks, cold holds {stats['cold']['resident_blocks']}, NVMe read {stats['bytes_nvme_read']} B, "
          f"h2d {stats['bytes_host_to_device']} B, d2h {stats['bytes_device_to_host']} B")
