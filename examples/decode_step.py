#!/usr/bin/env python3
"""One decode step of an engine that offloads its KV cache to TierKV, layer by layer.

For every layer L of the step:
  1. settle the prefetch ticket issued for L while layer L-1 ran (tierkv_prefetch_settle), with
     the attention L computes below: the library records what the prediction was worth;
  2. plan where each of L's blocks gets its attention (tierkv_plan_layer): in hot already,
     fetched to hot for the GPU, or attended on CPU threads where it sits in warm;
  3. fetch the "fetch" blocks (tierkv_make_resident, demand) and attend the hot ones on the
     "GPU": on the emulated accelerator hot blocks are host memory, so NumPy reads them at the
     addresses the library hands out, as a CUDA kernel would read its page table;
  4. attend the "cpu" blocks with tierkv_attend_warm (cold ones are first read into warm);
  5. merge the two partials (tierkv_merge_partials) and check the result against attention
     computed over the whole context in float64: the split is exact;
  6. prefetch for layer L+1 from a hint (here its query plus noise, as a speculated query
     would be), so its blocks move while L computes.

Run: python3 examples/decode_step.py [--layers 4] [--blocks 48] [--seed 7]
Needs the library (tools/build-library dist) and NumPy. Prints per-layer decisions, the error
against float64 and the prefetch statistics; exits non-zero if the merged output is off.
"""
import argparse
import ctypes
import os
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
import numpy as np  # noqa: E402
import tierkv  # noqa: E402

KV_HEADS, QUERY_HEADS, HEAD_DIM, TOKENS = 2, 8, 64, 16


def attention_partial(query, keys, values):
    """Decode attention over [tokens, kv_heads, dim] keys/values as a mergeable partial:
    (o normalised, m = max logit, l = sum of exp(logit - m)), natural log, 1/sqrt(dim) scale."""
    group = QUERY_HEADS // KV_HEADS
    output = np.zeros((QUERY_HEADS, HEAD_DIM), dtype=np.float64)
    maxima = np.full(QUERY_HEADS, -np.inf)
    sums = np.zeros(QUERY_HEADS)
    for head in range(QUERY_HEADS):
        k = keys[:, head // group].astype(np.float64)
        v = values[:, head // group].astype(np.float64)
        if len(k) == 0:
            continue
        logits = k @ query[head].astype(np.float64) / np.sqrt(HEAD_DIM)
        maxima[head] = logits.max()
        weights = np.exp(logits - maxima[head])
        sums[head] = weights.sum()
        output[head] = weights @ v / sums[head]
    return output, maxima, sums


def block_mass(query, keys):
    """Each block's share of the attention, averaged over query heads (keys [blocks, tokens, kv, dim])."""
    group = QUERY_HEADS // KV_HEADS
    mass = np.zeros(len(keys))
    for head in range(QUERY_HEADS):
        logits = keys[:, :, head // group].astype(np.float64) @ query[head] / np.sqrt(HEAD_DIM)
        weights = np.exp(logits - logits.max())
        mass += weights.sum(axis=1) / weights.sum() / QUERY_HEADS
    return mass


def run(layers=4, blocks=48, seed=7, verbose=True):
    rng = np.random.default_rng(seed)
    layout = {"layers": layers, "kv_heads": KV_HEADS, "query_heads": QUERY_HEADS, "head_dim": HEAD_DIM,
              "tokens_per_block": TOKENS, "dtype": "fp16"}
    # The engine's KV for one sequence: [layer, block, K/V, token, kv_head, dim]; a few blocks per
    # layer lean towards that layer's query, so attention is concentrated, as in real models.
    queries = rng.standard_normal((layers, QUERY_HEADS, HEAD_DIM)).astype(np.float32)
    kv = rng.standard_normal((layers, blocks, 2, TOKENS, KV_HEADS, HEAD_DIM)).astype(np.float32)
    for layer in range(layers):
        group_mean = queries[layer].reshape(KV_HEADS, -1, HEAD_DIM).mean(axis=1)
        for block in rng.choice(blocks, size=4, replace=False):
            kv[layer, block, 0, 2:5] += 3.0 * group_mean / np.linalg.norm(group_mean, axis=1, keepdims=True)
    kv = kv.astype(np.float16)
    worst = 0.0
    with tempfile.TemporaryDirectory() as directory, tierkv.Hierarchy(
            layout=layout, hot_blocks=blocks // 2, warm_blocks=blocks, cold_blocks=4 * layers * blocks,
            cache_dir=directory, buffered_fallback=True, accelerator="emulated", admit_to_hot=False,
            key_summaries="from-keys", key_sketch_bits=4, cpu_threads=2) as cache:
        tokens = np.arange(blocks * TOKENS, dtype=np.uint32)
        keys = [cache.block_keys(tokens, layer) for layer in range(layers)]
        for layer in range(layers):
            for position, key in enumerate(keys[layer]):
                cache.store(key, kv[layer, position], position=position, sequence=1)
        block_bytes = cache.layout.block_bytes
        rates = dict(host_to_device_bytes_per_s=block_bytes * 3e4, cold_read_bytes_per_s=block_bytes * 1e5)
        hint = queries[0] + 0.3 * rng.standard_normal(queries[0].shape).astype(np.float32)
        ticket = cache.prefetch(keys[0], hint, budget_blocks=6)
        for layer in range(layers):
            query = queries[layer]
            mass = block_mass(query, kv[layer, :, 0])
            ticket.settle(mass)  # 1: the prediction for this layer meets the attention it gets
            decisions, seconds = cache.plan_layer(  # 2
                keys[layer], cpu_attention_bytes_per_s=block_bytes * 2e4, gpu_seconds=20e-6, **rates)
            on_gpu = [i for i, d in enumerate(decisions) if d in ("hot", "fetch")]
            on_cpu = [i for i, d in enumerate(decisions) if d == "cpu"]
            parts = []
            with cache.make_resident([keys[layer][i] for i in on_gpu], tier="hot") as hot:  # 3
                hot.wait()
                block_view = np.dtype(np.float16), (2, TOKENS, KV_HEADS, HEAD_DIM)
                pages = [np.frombuffer((ctypes.c_char * block_bytes).from_address(hot.device_address(n)),
                                       dtype=block_view[0]).reshape(block_view[1]) for n in range(len(on_gpu))]
                if pages:
                    gpu_k = np.concatenate([page[0] for page in pages])
                    gpu_v = np.concatenate([page[1] for page in pages])
                    parts.append(attention_partial(query, gpu_k, gpu_v))
            if on_cpu:  # 4
                with cache.make_resident([keys[layer][i] for i in on_cpu], tier="warm") as warm:
                    warm.wait()
                    parts.append(cache.attend_warm([keys[layer][i] for i in on_cpu], query))
            output, _, _ = tierkv.merge_partials(  # 5
                np.stack([p[0] for p in parts]), np.stack([p[1] for p in parts]), np.stack([p[2] for p in parts]))
            exact, _, _ = attention_partial(query, kv[layer, :, 0].reshape(-1, KV_HEADS, HEAD_DIM),
                                            kv[layer, :, 1].reshape(-1, KV_HEADS, HEAD_DIM))
            error = float(np.abs(output - exact).max())
            worst = max(worst, error)
            if verbose:
                print(f"layer {layer}: {len(on_gpu) - decisions.count('fetch')} in hot, {decisions.count('fetch')} fetched, "
                      f"{len(on_cpu)} on CPU (planned {seconds * 1e6:.0f} us); max abs error against float64 {error:.1e}")
            if layer + 1 < layers:  # 6
                hint = queries[layer + 1] + 0.3 * rng.standard_normal(query.shape).astype(np.float32)
                ticket = cache.prefetch(keys[layer + 1], hint, budget_blocks=6)
        stats = cache.prefetch_stats()
        if verbose:
            print(f"prefetch over {stats['settled']} layers: precision {stats['precision']:.2f}, "
                  f"recall {stats['recall']:.2f}, timeliness {stats['timeliness']:.2f}, "
                  f"wasted {stats['wasted_bytes'] / 1024:.0f} KiB")
    return worst, stats


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--blocks", type=int, default=48)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    worst, _ = run(args.layers, args.blocks, args.seed)
    if worst > 2e-3:
        sys.exit(f"the merged attention is off by {worst:.1e}")


if __name__ == "__main__":
    main()
