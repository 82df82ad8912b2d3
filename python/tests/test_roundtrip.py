"""The C ABI through Python: store -> evict to cold -> fetch -> CPU attention, with NumPy data."""

import numpy as np
import pytest

import tierkv

LAYOUT = {"layers": 2, "kv_heads": 2, "query_heads": 8, "head_dim": 128, "tokens_per_block": 16, "dtype": "fp16"}


@pytest.fixture
def cache(tmp_path):
    with tierkv.Hierarchy(layout=LAYOUT, hot_blocks=2, warm_blocks=8, cold_blocks=64, cache_dir=str(tmp_path / "cold"),
                          accelerator="emulated", buffered_fallback=True, cpu_threads=2,
                          numa_node=0, cpu_spin_us=0) as hierarchy:  # CPU attention workers on node 0's CPUs
        yield hierarchy


def reference_attention(blocks, query, token_counts):
    """Attention over the blocks' tokens in float64 (GQA: query head h reads KV head h // group)."""
    keys = np.concatenate([b[0, :n] for b, n in zip(blocks, token_counts)]).astype(np.float64)
    values = np.concatenate([b[1, :n] for b, n in zip(blocks, token_counts)]).astype(np.float64)
    heads, dim = query.shape
    group = heads // keys.shape[1]
    output = np.empty((heads, dim))
    for head in range(heads):
        logits = keys[:, head // group] @ query[head].astype(np.float64) / np.sqrt(dim)
        weights = np.exp(logits - logits.max())
        output[head] = weights @ values[:, head // group] / weights.sum()
    return output


def test_a_request_s_block_table_comes_in_one_call(cache):
    rng = np.random.default_rng(11)
    tokens = np.arange(6 * 16, dtype=np.uint32) * 5 + 1
    keys = cache.block_keys(tokens, layer=0)
    blocks = [rng.standard_normal(cache.layout.block_shape).astype(np.float16) for _ in keys]
    for position, (key, block) in enumerate(zip(keys, blocks)):
        cache.store(key, block, position=position, sequence=1)
    absent = cache.block_keys(np.arange(16, dtype=np.uint32) + 5000, layer=0)[0]
    with cache.make_resident(keys[:5], tier="warm") as request:
        request.wait(timeout=10)
        assert request.states() == [request.state(i) for i in range(5)] == ["ready"] * 5
        views = request.host_arrays()
        assert len(views) == 5 and not any(view.flags.writeable for view in views)
        for view, block in zip(views, blocks):
            np.testing.assert_array_equal(view, block)
        with pytest.raises(tierkv.InvalidArgument, match="device_addresses is for hot requests"):
            request.device_addresses()
    with cache.make_resident([keys[0], absent], tier="hot") as request:
        request.wait(timeout=10)
        assert request.states() == ["ready", "missing"]
        with pytest.raises(tierkv.NotFound, match="block 1 is missing, not ready"):
            request.device_addresses()
    with cache.make_resident([], tier="warm") as request:
        assert request.states() == [] and request.host_arrays() == []


def test_packed_keys_pass_straight_through(cache):
    rng = np.random.default_rng(12)
    keys = cache.block_keys(np.arange(4 * 16, dtype=np.uint32) + 300, layer=1)
    blocks = [rng.standard_normal(cache.layout.block_shape).astype(np.float16) for _ in keys]
    for position, (key, block) in enumerate(zip(keys, blocks)):
        cache.store(key, block, position=position, sequence=2)
    packed = tierkv.pack_keys(keys)
    assert packed.dtype == tierkv.KEY_DTYPE and packed.shape == (4,)
    assert [tuple(int(v) for v in row)[:3] for row in packed.tolist()] == [tuple(key) for key in keys]
    packed.flags.writeable = False  # a read-only array is copied, not refused
    for candidate in (packed, packed[::-1][::-1], np.repeat(packed, 2)[::2]):
        with cache.make_resident(candidate, tier="warm") as request:
            request.wait(timeout=10)
            for view, block in zip(request.host_arrays(), blocks):
                np.testing.assert_array_equal(view, block)
    with pytest.raises(tierkv.InvalidArgument, match="one dimension"):
        cache.make_resident(packed.reshape(2, 2))
    with pytest.raises(tierkv.InvalidArgument, match="same key more than once"):
        cache.make_resident(np.concatenate([packed, packed[:1]]))
    assert tierkv.pack_keys([]).shape == (0,)
    with cache.make_resident(tierkv.pack_keys([]), tier="hot") as request:
        assert request.states() == []


def test_version():
    assert tierkv.version().count(".") == 2
    assert tierkv.abi_version() == 1


def test_store_evict_fetch_attend(cache):
    rng = np.random.default_rng(7)
    tokens = np.arange(12 * 16, dtype=np.uint32) * 3 + 11
    keys = cache.block_keys(tokens, layer=1)
    assert len(keys) == 12 and all(key.layer == 1 for key in keys)
    blocks = [rng.standard_normal(cache.layout.block_shape).astype(np.float16) for _ in keys]
    for position, (key, block) in enumerate(zip(keys, blocks)):
        assert cache.store(key, block, position=position, sequence=3)
    assert not cache.store(keys[0], blocks[0], position=0, sequence=4), "a cached key is shared, not copied"

    stats = cache.stats()
    assert stats["cold"]["resident_blocks"] > 0 and stats["accelerator_is_emulated"]
    assert cache.fastest_tier(keys[0]) == "cold"

    # Fetch from cold into warm: zero-copy views of the pinned memory, equal to what was stored.
    with cache.make_resident(keys[:4], tier="warm") as request:
        request.wait(timeout=10)
        assert request.ready and [request.state(i) for i in range(4)] == ["ready"] * 4
        for index in range(4):
            view = request.host_array(index)
            assert not view.flags.writeable
            np.testing.assert_array_equal(view, blocks[index])
    with cache.make_resident(keys[:1], tier="hot") as request:
        request.wait()
        assert request.device_address(0) != 0
        np.testing.assert_array_equal(request.device_addresses(), [request.device_address(0)])
        with pytest.raises(tierkv.InvalidArgument, match="host_arrays is for warm requests"):
            request.host_arrays()
    np.testing.assert_array_equal(cache.read(keys[5]), blocks[5])
    assert cache.stats()["bytes_nvme_read"] > 0

    # CPU attention over 6 blocks (the last partly filled) against float64 NumPy.
    query = rng.standard_normal((8, 128)).astype(np.float32)
    counts = [16, 16, 16, 16, 16, 9]
    output, m, l = cache.attend_warm(keys[:6], query, token_counts=counts)
    expected = reference_attention(blocks[:6], query, counts)
    assert np.abs(output - expected).max() <= 2e-3

    # Two partials merge to the whole.
    first = cache.attend_warm(keys[:2], query, token_counts=counts[:2])
    second = cache.attend_warm(keys[2:6], query, token_counts=counts[2:6])
    merged, merged_m, merged_l = tierkv.merge_partials(
        np.stack([first[0], second[0]]), np.stack([first[1], second[1]]), np.stack([first[2], second[2]]))
    assert np.abs(merged - output).max() <= 1e-5
    np.testing.assert_allclose(merged_l, l, rtol=1e-4)

    # Prefix lookup over the keys' token sequence at both layers: layer 0 was never stored.
    assert cache.lookup_prefix(tokens).cached == 0
    for position, key in enumerate(cache.block_keys(tokens, layer=0)):
        cache.store(key, blocks[position], position=position, sequence=3)
    assert cache.lookup_prefix(tokens).cached == 12

    cache.report_attention(keys[:3], [0.5, 0.25, 0.25])
    cache.drop_sequence(3)
    cache.drop_sequence(4)
    written, failed = cache.flush()
    assert failed == 0


def test_restart_finds_flushed_blocks(tmp_path):
    config = dict(layout=LAYOUT, hot_blocks=2, warm_blocks=4, cold_blocks=32, cache_dir=str(tmp_path / "cold"),
                  accelerator="emulated", buffered_fallback=True)
    block = np.full((2, 16, 2, 128), 1.5, dtype=np.float16)
    with tierkv.Hierarchy(config) as first:
        key = first.block_keys(np.arange(16), layer=0)[0]
        first.store(key, block, position=0)
        first.close(flush=True)
    with tierkv.Hierarchy(config) as second:
        assert second.fastest_tier(key) == "cold"
        np.testing.assert_array_equal(second.read(key), block)


def test_readme_python_example_runs(tmp_path):
    import re
    from pathlib import Path
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    code = re.search(r"```python\n(import numpy as np, tierkv.*?)```", readme, re.S).group(1)
    assert '"/tmp/tierkv"' in code
    scope = {}
    exec(code.replace('"/tmp/tierkv"', repr(str(tmp_path / "cold"))), scope)
    assert scope["out"].shape == (8, 128) and np.all(scope["l"] == 64)


def test_concurrent_threads_share_one_hierarchy(tmp_path):
    """ctypes drops the GIL during calls: four threads store, fetch and read at once."""
    import threading
    with tierkv.Hierarchy(layout=LAYOUT, hot_blocks=4, warm_blocks=16, cold_blocks=256, cache_dir=str(tmp_path / "c"),
                          accelerator="emulated", buffered_fallback=True) as cache:
        errors = []

        def work(thread):
            try:
                rng = np.random.default_rng(thread)
                keys = cache.block_keys(np.arange(16 * 8) + 1000 * thread, layer=thread % 2)
                blocks = [rng.standard_normal(cache.layout.block_shape).astype(np.float16) for _ in keys]
                for position, (key, block) in enumerate(zip(keys, blocks)):
                    cache.store(key, block, position=position, sequence=thread)
                for key, block in zip(keys, blocks):
                    np.testing.assert_array_equal(cache.read(key), block)
                with cache.make_resident(keys[:2], tier="warm") as request:
                    request.wait(timeout=30)
                    np.testing.assert_array_equal(request.host_array(1), blocks[1])
            except Exception as error:  # noqa: BLE001 (reported below)
                errors.append((thread, error))

        threads = [threading.Thread(target=work, args=(index,)) for index in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors
        assert cache.stats()["cold"]["resident_blocks"] > 0


@pytest.mark.parametrize("warm_policy, block_zero_tier", [(None, "cold"), ("streamingllm:1:2", "warm")])
def test_warm_policy_decides_what_leaves_warm(tmp_path, warm_policy, block_zero_tier):
    """With "policy": "lru" alone the warm tier sends its oldest block (position 0) to NVMe; with
    "warm_policy": "streamingllm:1:2" warm keeps that attention sink and sends two middle blocks."""
    fields = {"warm_policy": warm_policy} if warm_policy else {}
    with tierkv.Hierarchy(layout=LAYOUT, hot_blocks=2, warm_blocks=4, cold_blocks=16, cache_dir=str(tmp_path / "cold"),
                          accelerator="emulated", buffered_fallback=True, cpu_threads=1, policy="lru", **fields) as cache:
        rng = np.random.default_rng(3)
        keys = cache.block_keys(np.arange(6 * 16, dtype=np.uint32), layer=0)
        blocks = [rng.standard_normal(cache.layout.block_shape).astype(np.float16) for _ in keys]
        for position, (key, block) in enumerate(zip(keys, blocks)):
            cache.store(key, block, position=position, sequence=1)
        tiers = [cache.fastest_tier(key) for key in keys]
        assert tiers[0] == block_zero_tier, tiers
        assert tiers.count("cold") == 2, tiers
        assert all(tier != "cold" for tier in tiers[-2:]), tiers
        for key, block in zip(keys, blocks):  # wherever each block went, nothing was lost
            np.testing.assert_array_equal(cache.read(key), block)


def test_place_after_prefill_brings_the_attended_blocks_back_from_cold(tmp_path):
    """A two-layer prefill through hot 2 / warm 4 leaves layer 0 in cold; its attended blocks come back."""
    config = dict(layout=LAYOUT, hot_blocks=2, warm_blocks=4, cold_blocks=32, cache_dir=str(tmp_path / "cold"),
                  accelerator="emulated", buffered_fallback=True)
    rng = np.random.default_rng(11)
    tokens = np.arange(6 * 16, dtype=np.uint32)
    with tierkv.Hierarchy(config) as cache:
        layers = [cache.block_keys(tokens, layer=layer) for layer in range(2)]
        blocks = {}
        for keys in layers:  # layer after layer, as a prefill writes them
            for position, key in enumerate(keys):
                blocks[key] = rng.standard_normal(cache.layout.block_shape).astype(np.float16)
                cache.store(key, blocks[key], position=position, sequence=1)
        assert [cache.fastest_tier(key) for key in layers[0]] == ["cold"] * 6
        mass = [np.array([0.5, 0.05, 0.0, 0.4, 0.05, 0.0]), np.array([0.0, 0.0, 0.1, 0.0, 0.0, 0.9])]

        placement = cache.place_after_prefill(zip(layers, mass), coverage=0.9, block_limit=3)
        # Layer 0's 0.9 is blocks 0 and 3 (shares 0.5, 0.4); layer 1's is block 5 (0.9), which the
        # prefill left in hot or warm. The three best shares across layers fit the limit.
        assert placement.chosen == 3 and placement.from_cold == 2
        assert set(placement.request.keys) >= {layers[0][0], layers[0][3]}
        with placement.request as request:
            request.wait(timeout=10)
            for index, key in enumerate(request.keys):
                np.testing.assert_array_equal(request.host_array(index), blocks[key])
        assert cache.fastest_tier(layers[0][0]) == "warm" and cache.fastest_tier(layers[0][1]) == "cold"

        # A limit of one keeps the best share of all (layer 1's block 5, 0.9).
        placement = cache.place_after_prefill(zip(layers, mass), coverage=0.9, block_limit=1)
        assert placement.chosen == 1 and placement.from_cold == 0
        if placement.request is not None:
            assert placement.request.keys == [layers[1][5]]
            placement.request.release()

        with pytest.raises(tierkv.InvalidArgument, match="coverage 1.5"):
            cache.place_after_prefill(zip(layers, mass), coverage=1.5, block_limit=3)
        with pytest.raises(tierkv.InvalidArgument, match="twice"):
            cache.place_after_prefill([(layers[0], mass[0]), (layers[0], mass[0])], block_limit=3)
        with pytest.raises(tierkv.InvalidArgument, match=r"layers\[1\] mass has shape \(2,\); expected \(6,\)"):
            cache.place_after_prefill([(layers[0], mass[0]), (layers[1], [1.0, 2.0])], block_limit=3)
        with pytest.raises(tierkv.InvalidArgument, match="mass -1"):
            cache.place_after_prefill([(layers[0], -mass[0] - 1)], block_limit=3)
        assert cache.place_after_prefill([], block_limit=3) == (0, 0, None)


def test_store_many_from_device_copies_each_block_where_its_address_says(cache):
    rng = np.random.default_rng(11)
    tokens = np.arange(2 * 16, dtype=np.uint32) + 500
    sources = cache.block_keys(tokens, layer=0)
    blocks = [rng.standard_normal(cache.layout.block_shape).astype(np.float16) for _ in sources]
    for position, (key, block) in enumerate(zip(sources, blocks)):
        cache.store(key, block, position=position)
    # The emulated hot tier's device memory stands in for the engine's paged cache.
    with cache.make_resident(sources, tier="hot") as request:
        request.wait(timeout=10)
        addresses = [request.device_address(0), request.device_address(1)]
        copies = cache.block_keys(np.arange(3 * 16, dtype=np.uint32) + 9000, layer=1)
        stored = cache.store_many_from_device(copies + [copies[0]], [addresses[1], addresses[0], addresses[1],
                                                                     addresses[1]], positions=[0, 1, 2, 0], sequence=5)
        assert stored == [True, True, True, False], "the repeated key is already cached by then"
        with pytest.raises(tierkv.InvalidArgument, match=r"positions has shape \(2,\); expected \(3,\)"):
            cache.store_many_from_device(copies, addresses + [addresses[0]], positions=[0, 1])
        with pytest.raises(tierkv.InvalidArgument, match=r"device_addresses\[1\] is 0"):
            cache.store_many_from_device(copies, [addresses[0], 0, addresses[0]], positions=[0, 1, 2])
    for key, source in zip(copies, [1, 0, 1]):
        np.testing.assert_array_equal(cache.read(key), blocks[source])
    assert cache.store_many_from_device([], [], positions=[]) == []
