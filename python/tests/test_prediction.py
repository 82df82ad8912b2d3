"""Prediction through the C ABI: the mass `predict_mass` gives each block, against the attention
computed exactly over the same fp16 keys, and its errors."""

import numpy as np
import pytest

import tierkv

LAYOUT = {"layers": 2, "kv_heads": 2, "query_heads": 8, "head_dim": 64, "tokens_per_block": 16, "dtype": "fp16"}
BLOCKS = 24
PLANTED = (5, 11, 17)  # blocks whose keys lean towards the query


def open_cache(**fields):
    config = dict(layout=LAYOUT, hot_blocks=4, warm_blocks=64, accelerator="emulated", key_summaries="from-keys")
    config.update(fields)
    return tierkv.Hierarchy(config)


def cuda_present():
    """Whether a hierarchy can put its hot tier on GPU 0 (the CUDA driver loads and sees a device)."""
    try:
        open_cache(accelerator="cuda:0").close()
        return True
    except tierkv.CUDAError:
        return False


# The prefetch tests also run with the hot tier in real GPU memory where there is a GPU.
ACCELERATORS = ["emulated", pytest.param("cuda:0", marks=pytest.mark.skipif(not cuda_present(), reason="no CUDA device"))]


def make_blocks(rng, query):
    """BLOCKS fp16 blocks [2, tokens, kv_heads, dim]; in the planted blocks a few tokens per KV head
    are pulled towards the mean query of that head's group, so they draw most of the attention."""
    blocks = rng.standard_normal((BLOCKS, 2, 16, 2, 64)).astype(np.float32)
    group = query.reshape(2, 4, 64).mean(axis=1)
    for block in PLANTED:
        for head in range(2):
            direction = group[head] / np.linalg.norm(group[head])
            blocks[block, 0, 3:6, head] += 6.0 * direction
    return blocks.astype(np.float16)


def exact_mass(blocks, query, tail=None):
    """Per block, the attention mass averaged over query heads, the softmax over every token of
    `blocks` plus the tail (which gets none of the blocks' mass), in float64."""
    keys = blocks[:, 0].astype(np.float64)  # [block, token, kv_head, dim]
    if tail is not None:
        keys_tail = tail.astype(np.float64)[None]
    heads, dim = query.shape
    mass = np.zeros(len(blocks))
    for head in range(heads):
        kv = head // (heads // keys.shape[2])
        logits = keys[:, :, kv] @ query[head].astype(np.float64) / np.sqrt(dim)  # [block, token]
        every = logits.ravel() if tail is None else np.concatenate(
            [logits.ravel(), keys_tail[0, :, kv] @ query[head].astype(np.float64) / np.sqrt(dim)])
        top = every.max()
        mass += np.exp(logits - top).sum(axis=1) / np.exp(every - top).sum()
    return mass / heads


@pytest.fixture
def setup():
    rng = np.random.default_rng(11)
    query = rng.standard_normal((8, 64)).astype(np.float32)
    blocks = make_blocks(rng, query)
    tokens = np.arange(BLOCKS * 16, dtype=np.uint32) + 7
    return rng, query, blocks, tokens


def stored(cache, blocks, tokens):
    keys = cache.block_keys(tokens, layer=1)
    for position, key in enumerate(keys):
        cache.store(key, blocks[position], position=position)
    return keys


@pytest.mark.parametrize("bits", [2, 4])
def test_sketch_mass_follows_the_exact_attention(setup, bits):
    _, query, blocks, tokens = setup
    with open_cache(key_sketch_bits=bits) as cache:
        keys = stored(cache, blocks, tokens)
        mass = cache.predict_mass(keys, query)  # default scoring: the sketch
        exact = exact_mass(blocks, query)
        assert mass.dtype == np.float32 and mass.shape == (BLOCKS,)
        assert (mass >= 0).all() and abs(mass.sum() - 1) < 1e-4  # every attended block is a candidate
        assert set(np.argsort(-mass)[:3]) == set(PLANTED)
        # Finer codes, closer masses: 4 bits track the exact mass block by block.
        assert np.abs(mass - exact).max() < (0.02 if bits == 2 else 0.004), np.abs(mass - exact).max()
        sketch = cache.predict_mass(keys, query, scoring="sketch")
        np.testing.assert_array_equal(sketch, mass)


def test_resident_blocks_and_the_tail_share_the_softmax(setup):
    rng, query, blocks, tokens = setup
    with open_cache(key_sketch_bits=4) as cache:
        keys = stored(cache, blocks, tokens)
        group = query.reshape(2, 4, 64).mean(axis=1)
        tail = rng.standard_normal((5, 2, 64)).astype(np.float32)
        tail += 6.0 * group / np.linalg.norm(group, axis=1, keepdims=True)  # the newest tokens draw attention too
        # Blocks 0, 1 (sinks) and 22, 23 (recent) are always resident; the rest are candidates.
        resident = [keys[0], keys[1], keys[22], keys[23]]
        candidates = keys[2:22]
        alone = cache.predict_mass(candidates, query)
        assert abs(alone.sum() - 1) < 1e-4
        # The candidates keep only their share of each head's attention.
        with_resident = cache.predict_mass(candidates, query, resident=resident)
        exact = exact_mass(blocks, query)[2:22]
        assert abs(with_resident.sum() - exact.sum()) < 0.005 and exact.sum() < 0.9
        assert np.abs(with_resident - exact).max() < 0.004
        with_tail = cache.predict_mass(candidates, query, resident=resident, tail_keys=tail)
        exact = exact_mass(blocks, query, tail=tail)[2:22]
        assert abs(with_tail.sum() - exact.sum()) < 0.005 and with_tail.sum() < with_resident.sum() - 0.05
        assert np.abs(with_tail - exact).max() < 0.004


def test_summary_scorings_rank_the_planted_blocks(setup):
    _, query, blocks, tokens = setup
    with open_cache(key_sketch_bits=0) as cache:
        keys = stored(cache, blocks, tokens)
        for scoring in ("default", "bound", "bound+moment"):
            mass = cache.predict_mass(keys, query, scoring=scoring)
            assert (mass >= 0).all() and mass.sum() <= 1 + 1e-4, scoring
            assert set(np.argsort(-mass)[:3]) == set(PLANTED), scoring
        np.testing.assert_array_equal(cache.predict_mass(keys, query), cache.predict_mass(keys, query, scoring="bound+moment"))
        with pytest.raises(tierkv.InvalidArgument, match="key_sketch_bits"):
            cache.predict_mass(keys, query, scoring="sketch")


def test_a_block_the_hierarchy_does_not_hold(setup):
    _, query, blocks, tokens = setup
    with open_cache() as cache:
        keys = stored(cache, blocks[:4], tokens[:64])
        stranger = tierkv.BlockKey(1, 2, 1)
        with pytest.raises(tierkv.NotFound, match=r"keys\[2\].*known_out"):
            cache.predict_mass([keys[0], keys[1], stranger, keys[3]], query)
        with pytest.raises(tierkv.NotFound, match=r"resident_keys\[0\]"):
            cache.predict_mass(keys, query, resident=[stranger])
        mass = cache.predict_mass([keys[0], keys[1], stranger, keys[3]], query, missing="nan")
        assert np.isnan(mass[2]) and np.isfinite(mass[[0, 1, 3]]).all()
        np.testing.assert_allclose(mass[[0, 1, 3]], cache.predict_mass([keys[0], keys[1], keys[3]], query), rtol=1e-6)


def test_bad_input_names_what_is_wrong(setup):
    _, query, blocks, tokens = setup
    with open_cache() as cache:
        keys = stored(cache, blocks[:4], tokens[:64])
        with pytest.raises(tierkv.InvalidArgument, match=r"query has shape \(4, 64\)"):
            cache.predict_mass(keys, query[:4])
        with pytest.raises(tierkv.InvalidArgument, match="one call predicts one layer"):
            cache.predict_mass(keys + cache.block_keys(tokens[:16], layer=0), query)
        with pytest.raises(tierkv.InvalidArgument, match=r"tail_keys has shape \(3, 64\)"):
            cache.predict_mass(keys, query, tail_keys=np.zeros((3, 64)))
        with pytest.raises(tierkv.InvalidArgument, match=r"token_counts\[1\] is 17"):
            cache.predict_mass(keys, query, token_counts=[16, 17, 16, 16])
        with pytest.raises(tierkv.InvalidArgument, match="scoring is 'oracle'"):
            cache.predict_mass(keys, query, scoring="oracle")
        bad = query.copy()
        bad[3, 5] = np.nan
        with pytest.raises(tierkv.InvalidArgument, match=r"query\[197\] is nan"):
            cache.predict_mass(keys, bad)
    with open_cache(key_summaries="off") as cache:
        keys = stored(cache, blocks[:1], tokens[:16])
        with pytest.raises(tierkv.InvalidArgument, match='"key_summaries": "from-keys"'):
            cache.predict_mass(keys, query)
    with pytest.raises(tierkv.InvalidArgument, match="key_sketch_bits.*3"):
        open_cache(key_sketch_bits=3)
    with pytest.raises(tierkv.InvalidArgument, match='"key_summaries" is not "from-keys"'):
        open_cache(key_summaries="off", key_sketch_bits=2)


def test_summaries_survive_a_restart(setup, tmp_path):
    _, query, blocks, tokens = setup
    config = dict(key_sketch_bits=2, cold_blocks=64, cache_dir=str(tmp_path / "cold"), buffered_fallback=True,
                  warm_blocks=8)
    with open_cache(**config) as cache:
        keys = cache.block_keys(tokens, layer=1)
        for position, key in enumerate(keys):
            cache.store(key, blocks[position], position=position, sequence=1)
        before = cache.predict_mass(keys, query)
        assert cache.rebuild_key_summaries() == {"missing": 0, "rebuilt": 0, "failed": 0}
        cache.close(flush=True)
    # The close saved the cold blocks' summaries in summaries.tkv: the reopened cache ranks them
    # at once, without reading a block back.
    with open_cache(**config) as cache:
        assert cache.fastest_tier(keys[0]) == "cold"
        stats = cache.stats()
        assert stats["summaries_restored"] == BLOCKS and stats["summarized_blocks"] == BLOCKS
        np.testing.assert_array_equal(cache.predict_mass(keys, query), before)
        assert cache.rebuild_key_summaries() == {"missing": 0, "rebuilt": 0, "failed": 0}
        assert cache.stats()["bytes_nvme_read"] == 0
    # Without the file (lost, or the run crashed before saving it) they are rebuilt from the blocks.
    (tmp_path / "cold" / "summaries.tkv").unlink()
    with open_cache(**config) as cache:
        assert cache.fastest_tier(keys[0]) == "cold"
        assert cache.stats()["summaries_restored"] == 0
        # The blocks found in cold have no summaries yet: prediction says so instead of guessing.
        with pytest.raises(tierkv.NotFound, match="no key summary"):
            cache.predict_mass(keys, query)
        assert np.isnan(cache.predict_mass(keys, query, missing="nan")).all()
        assert cache.rebuild_key_summaries(batch_blocks=5) == {"missing": BLOCKS, "rebuilt": BLOCKS, "failed": 0}
        np.testing.assert_allclose(cache.predict_mass(keys, query), before, rtol=1e-6, atol=1e-9)
        with pytest.raises(tierkv.InvalidArgument, match="batch_blocks is 0"):
            cache.rebuild_key_summaries(batch_blocks=0)
    with open_cache(key_summaries="off") as cache:
        with pytest.raises(tierkv.InvalidArgument, match="keeps no key summaries"):
            cache.rebuild_key_summaries()


@pytest.mark.parametrize("accelerator", ACCELERATORS)
def test_prefetch_moves_the_predicted_blocks_and_is_judged_on_settle(setup, accelerator):
    _, query, blocks, tokens = setup
    exact = exact_mass(blocks.astype(np.float32), query)
    top3 = set(np.argsort(-exact)[:3])
    assert top3 == set(PLANTED)
    with open_cache(key_sketch_bits=4, admit_to_hot=False, accelerator=accelerator) as cache:
        assert cache.stats()["accelerator_is_emulated"] == (accelerator == "emulated")
        keys = stored(cache, blocks, tokens)
        assert all(cache.fastest_tier(key) == "warm" for key in keys)
        stranger = cache.block_keys(np.arange(16, dtype=np.uint32) + 100000, layer=1)[0]
        ticket = cache.prefetch(keys + [stranger], query, budget_blocks=3)
        assert (ticket.fetched, ticket.staged, ticket.unknown) == (3, 0, 1)
        ticket.wait(timeout=10)
        assert {i for i, key in enumerate(keys) if cache.fastest_tier(key) == "hot"} == set(PLANTED)
        assert cache.stats()["hot"]["pinned_blocks"] == 3, "the ticket pins what it fetched until settled"
        ticket.settle(np.append(exact, 0.0))
        assert cache.stats()["hot"]["pinned_blocks"] == 0
        stats = cache.prefetch_stats()
        assert stats["predictions"] == 1 and stats["settled"] == 1 and stats["fetched_blocks"] == 3
        assert stats["precision"] == 1.0 and stats["recall"] == 1.0 and stats["timeliness"] == 1.0
        assert stats["wasted_blocks"] == 0 and stats["wasted_bytes"] == 0.0
        with pytest.raises(tierkv.InvalidHandle, match="settled or abandoned"):
            ticket.settle(np.append(exact, 0.0))

        # A wrong guess is judged as such: a query that prefers other blocks wastes its fetches.
        other = -query
        ticket = cache.prefetch(keys, other, budget_blocks=3)
        ticket.wait(timeout=10)
        ticket.settle(exact, needed=exact >= np.sort(exact)[-3])
        stats = cache.prefetch_stats()
        assert stats["settled"] == 2 and stats["top_k_blocks"] == 6
        assert stats["wasted_blocks"] >= 2 and stats["precision"] < 0.75, stats


@pytest.mark.parametrize("accelerator", ACCELERATORS)
def test_prefetch_from_the_engines_own_masses(setup, accelerator):
    _, _, blocks, tokens = setup
    exact = exact_mass(blocks.astype(np.float32), setup[1])
    # No key summaries are needed when the engine brings its own prediction.
    with open_cache(key_summaries="off", admit_to_hot=False, accelerator=accelerator) as cache:
        keys = stored(cache, blocks, tokens)
        stranger = cache.block_keys(np.arange(16, dtype=np.uint32) + 100000, layer=1)[0]
        ticket = cache.prefetch_mass(keys + [stranger], np.append(exact, 1.0), budget_blocks=4)
        # The stranger ranks first but is not held: skipped and counted; the planted blocks move.
        assert (ticket.fetched, ticket.staged, ticket.unknown) == (3, 0, 1)
        ticket.wait(timeout=10)
        assert {i for i, key in enumerate(keys) if cache.fastest_tier(key) == "hot"} >= set(PLANTED)
        ticket.settle(np.append(exact, 0.0), top_k=3)
        stats = cache.prefetch_stats()
        assert stats["predictions"] == 1 and stats["settled"] == 1, stats
        assert stats["recall"] == 1.0 and stats["precision"] == 1.0 and stats["wasted_blocks"] == 0, stats
        with pytest.raises(tierkv.InvalidArgument, match=r"mass\[2\] is -1"):
            cache.prefetch_mass(keys, np.where(np.arange(len(keys)) == 2, -1.0, exact), budget_blocks=2)
        with pytest.raises(tierkv.InvalidArgument, match=r"mass has shape \(2,\)"):
            cache.prefetch_mass(keys, [0.5, 0.5], budget_blocks=2)
        other_layer = cache.block_keys(tokens[:16], layer=0)[0]
        with pytest.raises(tierkv.InvalidArgument, match="one call prefetches one layer"):
            cache.prefetch_mass(keys[:1] + [other_layer], [0.5, 0.5], budget_blocks=2)
        with pytest.raises(tierkv.InvalidArgument, match="budget_blocks is -1"):
            cache.prefetch_mass(keys, exact, budget_blocks=-1)


def test_prefetch_budgets_deadline_and_errors(setup):
    _, query, blocks, tokens = setup
    with open_cache(key_sketch_bits=2, admit_to_hot=False) as cache:
        keys = stored(cache, blocks, tokens)
        # Coverage: the planted blocks hold most of the predicted mass; a 0.3 cut stops early.
        ticket = cache.prefetch(keys, query, budget_blocks=4, coverage=0.3)
        assert 1 <= ticket.fetched < 4
        ticket.abandon()
        assert cache.stats()["hot"]["pinned_blocks"] == 0 and cache.prefetch_stats()["abandoned"] == 1
        # A deadline no block can meet moves nothing.
        ticket = cache.prefetch(keys, query, budget_blocks=3, seconds_until_needed=1e-9,
                                host_to_device_bytes_per_s=25e9, cold_read_bytes_per_s=6e9)
        assert ticket.fetched == 0
        ticket.abandon()
        with pytest.raises(tierkv.InvalidArgument, match="host_to_device_bytes_per_s is 0"):
            cache.prefetch(keys, query, budget_blocks=3, seconds_until_needed=0.001)
        with pytest.raises(tierkv.InvalidArgument, match="coverage is 1.5"):
            cache.prefetch(keys, query, budget_blocks=3, coverage=1.5)
        with pytest.raises(tierkv.InvalidArgument, match="budget_blocks is -1"):
            cache.prefetch(keys, query, budget_blocks=-1)
        ticket = cache.prefetch(keys, query, budget_blocks=2)
        with pytest.raises(tierkv.InvalidArgument, match=r"actual_mass\[3\] is nan"):
            mass = np.zeros(len(keys), dtype=np.float32)
            mass[3] = np.nan
            ticket.settle(mass)
        with pytest.raises(tierkv.InvalidArgument, match=r"actual_mass has shape \(2,\)"):
            ticket.settle([0.5, 0.5])
        # The ticket survived the bad calls; closing the hierarchy abandons it.
    with open_cache(key_summaries="off") as cache:
        keys = stored(cache, blocks[:1], tokens[:16])
        with pytest.raises(tierkv.InvalidArgument, match='"key_summaries": "from-keys"'):
            cache.prefetch(keys, query, budget_blocks=1)


def test_plan_layer_places_each_block_by_the_cost_model(setup):
    _, query, blocks, tokens = setup
    with open_cache(key_sketch_bits=2, admit_to_hot=False, hot_blocks=16) as cache:
        keys = stored(cache, blocks[:8], tokens[:8 * 16])
        with cache.make_resident(keys[:2], tier="hot") as request:
            request.wait()
        stranger = cache.block_keys(np.arange(16, dtype=np.uint32) + 100000, layer=1)[0]
        block_bytes = cache.layout.block_bytes
        # One block per millisecond over the link; the CPU off: every warm block is fetched.
        rates = dict(host_to_device_bytes_per_s=block_bytes * 1000.0, cold_read_bytes_per_s=block_bytes * 1000.0)
        decisions, seconds = cache.plan_layer(keys + [stranger], **rates)
        assert decisions == ["hot", "hot"] + ["fetch"] * 6 + ["missing"]
        assert seconds == pytest.approx(0.006)
        # A CPU as fast as the link: the 6 warm blocks split between them, the layer done in half the time.
        decisions, seconds = cache.plan_layer(keys, cpu_attention_bytes_per_s=block_bytes * 1000.0, **rates)
        assert decisions[2:].count("fetch") == 3 and decisions[2:].count("cpu") == 3
        assert seconds == pytest.approx(0.003)
        # The GPU's own time after the last fetch moves blocks to the CPU; a CPU 10x faster takes them all.
        decisions, _ = cache.plan_layer(keys, cpu_attention_bytes_per_s=block_bytes * 10000.0, **rates)
        assert decisions[2:] == ["cpu"] * 6
        # Approximate mode skips blocks below the threshold, and needs their masses.
        mass = np.array([0.3, 0.3, 0.2, 0.001, 0.1, 0.002, 0.05, 0.047], dtype=np.float32)
        decisions, _ = cache.plan_layer(keys, mass=mass, skip_below_mass=0.01, **rates)
        assert [d for d, m in zip(decisions, mass) if m < 0.01] == ["skip", "skip"]
        assert "skip" not in [d for d, m in zip(decisions, mass) if m >= 0.01]
        with pytest.raises(tierkv.InvalidArgument, match="needs each block's mass"):
            cache.plan_layer(keys, skip_below_mass=0.01, **rates)
        with pytest.raises(tierkv.InvalidArgument, match="host_to_device_bytes_per_s is 0"):
            cache.plan_layer(keys, host_to_device_bytes_per_s=0, cold_read_bytes_per_s=1e9)
        with pytest.raises(tierkv.InvalidArgument, match="skip_below_mass is 1.5"):
            cache.plan_layer(keys, mass=mass, skip_below_mass=1.5, **rates)
    # Fetches stop at the hot slots the layer can have (4 slots, 2 holding its blocks, 1 pinned by
    # someone else): the rest go to the CPU even where fetching would be faster.
    with open_cache(key_sketch_bits=2, admit_to_hot=False, hot_blocks=4) as cache:
        keys = stored(cache, blocks[:9], tokens[:9 * 16])
        with cache.make_resident(keys[:2], tier="hot") as request:
            request.wait()
        block_bytes = cache.layout.block_bytes
        rates = dict(host_to_device_bytes_per_s=block_bytes * 1000.0, cold_read_bytes_per_s=block_bytes * 1000.0)
        with cache.make_resident([keys[8]], tier="hot") as other:
            other.wait()
            decisions, _ = cache.plan_layer(keys[:8], cpu_attention_bytes_per_s=block_bytes * 100.0, **rates)
        assert decisions[:2] == ["hot", "hot"] and decisions[2:].count("fetch") == 1 and decisions[2:].count("cpu") == 5


def test_predictor_mixes_the_hints_with_history_and_learns_whom_to_trust(setup):
    _, query, blocks, tokens = setup
    exact = exact_mass(blocks.astype(np.float32), query)
    with open_cache(key_sketch_bits=4) as cache:
        keys = stored(cache, blocks, tokens)
        predictor = cache.predictor(adapt_top_k=3)
        # The freshest query alone is what predict_mass gives; with nothing to go on, no mass at all.
        np.testing.assert_allclose(predictor.predict(keys, query=query), cache.predict_mass(keys, query), atol=1e-6)
        assert not predictor.predict(keys).any()
        # A speculation that points away from the planted blocks loses its weight within a few steps.
        wrong = -query
        for _ in range(5):
            predicted = predictor.predict(keys, speculated_query=wrong, query=query)
            predictor.observe(keys, exact)
        weights = predictor.weights(1)
        assert weights["speculative"] < 0.05 * 0.5 and weights["query"] == pytest.approx(0.3), weights
        assert predictor.weights(0) == pytest.approx({"speculative": 0.5, "query": 0.3, "history": 0.2})
        predicted = predictor.predict(keys, speculated_query=wrong, query=query)
        assert set(np.argsort(predicted)[-3:]) == set(PLANTED), predicted

        # History alone: the observed mass, decayed 0.9 per step, blended with recency.
        history = cache.predictor(speculative_weight=0, query_weight=0, recency_weight=0)
        history.observe(keys, exact)
        np.testing.assert_allclose(history.predict(keys), exact / exact.sum(), atol=1e-6)
        later = np.zeros(BLOCKS)
        later[0] = 0.5
        history.observe(keys, later)
        expected = 0.9 * exact + later
        np.testing.assert_allclose(history.predict(keys), expected / expected.sum(), atol=1e-6)
        history.forget(keys[:1])
        expected[0] = 0
        np.testing.assert_allclose(history.predict(keys), expected / expected.sum(), atol=1e-6)
        recency = cache.predictor(speculative_weight=0, query_weight=0, recency_weight=1)
        recency.observe(keys, np.zeros(BLOCKS))
        positions = np.arange(BLOCKS) * 2
        age = (100 - positions) / 8.0
        np.testing.assert_allclose(recency.predict(keys, positions=positions, newest_position=100),
                                   np.exp(-age) / np.exp(-age).sum(), rtol=1e-5)


def test_predictor_errors_name_what_is_wrong(setup):
    _, query, blocks, tokens = setup
    with open_cache(key_summaries="off") as cache:
        keys = stored(cache, blocks, tokens)
        with pytest.raises(tierkv.InvalidArgument, match="set both to 0 for history alone"):
            cache.predictor()
        history = cache.predictor(speculative_weight=0, query_weight=0)
        with pytest.raises(tierkv.InvalidArgument, match="keeps no key summaries"):
            history.predict(keys, query=query)
        with pytest.raises(tierkv.InvalidArgument, match="history decay is 0"):
            cache.predictor(speculative_weight=0, query_weight=0, history_decay=0)
        with pytest.raises(tierkv.InvalidArgument, match="all 0"):
            cache.predictor(speculative_weight=0, query_weight=0, history_weight=0)
        history.release()
        with pytest.raises(tierkv.InvalidHandle):
            history.predict(keys)
    with open_cache() as cache:
        keys = stored(cache, blocks, tokens)
        predictor = cache.predictor()
        with pytest.raises(tierkv.InvalidArgument, match=r"speculated_query has shape \(4, 64\)"):
            predictor.predict(keys, speculated_query=query[:4])
        with pytest.raises(tierkv.InvalidArgument, match="after newest_position 3"):
            predictor.predict(keys[:5], query=query, newest_position=3)
        with pytest.raises(tierkv.InvalidArgument, match="one call observes one layer"):
            predictor.observe(keys[:1] + cache.block_keys(tokens[:16], layer=0), [0.5, 0.5])
        stranger = cache.block_keys(np.arange(16, dtype=np.uint32) + 100000, layer=1)[0]
        with pytest.raises(tierkv.NotFound, match="no key summary"):
            predictor.predict(keys + [stranger], query=query)
        mass = predictor.predict(keys + [stranger], query=query, missing="nan")
        assert np.isnan(mass[-1]) and np.isfinite(mass[:-1]).all()
    # Closing the hierarchy released the predictor.
    with pytest.raises(tierkv.InvalidHandle):
        predictor.weights(1)
