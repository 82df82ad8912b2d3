"""A Hugging Face transformers `Cache` whose KV lives in TierKV beyond a hot window.

    from tierkv.hf import TierKVCache
    cache = TierKVCache(model.config, hot_window=256, tokens_per_block=16,
                        hot_blocks=64, warm_blocks=4096, cold_blocks=65536, cache_dir="/nvme/tierkv")
    model.generate(input_ids, past_key_values=cache, max_new_tokens=128)
    cache.close()

Each layer keeps its newest `hot_window` tokens (plus the block being filled) as the model's own
tensors. Older tokens are cut into blocks of `tokens_per_block` and stored in TierKV (host copy,
[2, tokens, kv_heads, head_dim] per block), where the tiers' policies move them between
accelerator, pinned host memory and NVMe. When the layer attends, its stored blocks are made
resident in the warm tier (pinned host memory), read zero-copy, and concatenated in front of the
hot window, so attention sees exactly the tokens a `DynamicCache` would (bit-identical values).

Needs transformers ≥ 5 (the layered `Cache` API) and torch. Greedy search and sampling are
supported; beam search and cropping (assisted decoding) raise NotImplementedError.
"""

import secrets

import numpy as np
import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from . import Hierarchy, InvalidArgument, _native

_TORCH_DTYPES = {torch.float16: "fp16", torch.float32: "fp32", torch.bfloat16: "bf16"}


class TierKVLayer(CacheLayerMixin):
    """One decoder layer's cache: a hot window of tensors plus blocks stored in TierKV."""

    is_sliding = False
    is_croppable = False
    supports_early_init = False

    def __init__(self, owner, layer_index):
        super().__init__()
        self.owner = owner
        self.layer_index = layer_index
        self.stored_blocks = 0  # blocks of this layer in TierKV, per batch row (all rows move together)

    def lazy_initialization(self, key_states, value_states):
        self.dtype, self.device = key_states.dtype, key_states.device
        self.keys = key_states[..., :0, :]
        self.values = value_states[..., :0, :]
        self.is_initialized = True

    def _key(self, row, block):
        return self.owner._block_key(row, block, self.layer_index)

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            self.owner._open(key_states)
        self.keys = torch.cat([self.keys, key_states], dim=-2)
        self.values = torch.cat([self.values, value_states], dim=-2)
        self._offload_beyond_window()
        if self.stored_blocks == 0:
            return self.keys, self.values
        stored_keys, stored_values = self._fetch_stored()
        return torch.cat([stored_keys, self.keys], dim=-2), torch.cat([stored_values, self.values], dim=-2)

    def _offload_beyond_window(self):
        """Stores the oldest full blocks while the hot tensors hold more than window + one block."""
        owner = self.owner
        block = owner.tokens_per_block
        while self.keys.shape[-2] >= owner.hot_window + block:
            keys = self.keys[..., :block, :].detach().to("cpu")
            values = self.values[..., :block, :].detach().to("cpu")
            for row in range(keys.shape[0]):
                # [heads, tokens, dim] -> [2, tokens, heads, dim], the TierKV block layout.
                data = torch.stack([keys[row].transpose(0, 1), values[row].transpose(0, 1)]).contiguous()
                array = data.view(torch.int16).numpy().view(owner.hierarchy.layout.numpy_dtype) \
                    if data.dtype == torch.bfloat16 else data.numpy()
                owner.hierarchy.store(self._key(row, self.stored_blocks), array, position=self.stored_blocks,
                                      sequence=owner._sequence(row))
            self.stored_blocks += 1
            self.keys = self.keys[..., block:, :]
            self.values = self.values[..., block:, :]

    def _fetch_stored(self):
        """Every stored block of this layer, made resident in warm and copied out as tensors."""
        owner = self.owner
        rows = self.keys.shape[0]
        keys = [self._key(row, block) for row in range(rows) for block in range(self.stored_blocks)]
        with owner.hierarchy.make_resident(keys, tier="warm") as request:
            request.wait()
            states = request.states()
            failed = [index for index, state in enumerate(states) if state != "ready"]
            if failed:
                raise RuntimeError(f"TierKV could not bring back {len(failed)} block(s) of layer {self.layer_index} "
                                   f"(first: {keys[failed[0]]}, {states[failed[0]]}); the cache cannot "
                                   "continue without recomputing them")
            arrays = np.stack(request.host_arrays())
        tensor = torch.from_numpy(arrays)
        if self.dtype == torch.bfloat16:
            tensor = tensor.view(torch.bfloat16)
        # [rows * blocks, 2, tokens, heads, dim] -> K and V [rows, heads, blocks * tokens, dim]
        heads, dim = tensor.shape[-2], tensor.shape[-1]
        tensor = tensor.reshape(rows, self.stored_blocks, 2, owner.tokens_per_block, heads, dim)
        tensor = tensor.permute(2, 0, 4, 1, 3, 5).reshape(2, rows, heads, self.stored_blocks * owner.tokens_per_block, dim)
        tensor = tensor.to(self.device, non_blocking=True)
        return tensor[0], tensor[1]

    def get_seq_length(self):
        if not self.is_initialized:
            return 0
        return self.stored_blocks * self.owner.tokens_per_block + self.keys.shape[-2]

    def get_mask_sizes(self, query_length):
        return self.get_seq_length() + query_length, 0

    def get_max_length(self):
        return -1

    def reset(self):
        self.keys = self.values = None
        self.is_initialized = False
        self.stored_blocks = 0

    def reorder_cache(self, beam_idx):
        raise NotImplementedError("TierKVCache does not support beam search (reorder_cache) yet")

    def crop(self, tokens_to_remove):
        raise NotImplementedError("TierKVCache does not support cropping (assisted decoding) yet")

    def batch_repeat_interleave(self, repeats):
        raise NotImplementedError("TierKVCache does not support batch expansion (num_return_sequences > 1) yet")

    def batch_select_indices(self, indices):
        raise NotImplementedError("TierKVCache does not support batch selection yet")


class TierKVCache(Cache):
    """A transformers cache backed by TierKV tiers beyond a hot window of `hot_window` tokens.

    Args:
        config: the model's config (`num_hidden_layers`, `num_attention_heads`, `num_key_value_heads`).
        hot_window: tokens per layer kept as the model's own tensors (the newest ones).
        tokens_per_block: tokens per TierKV block.
        hot_blocks, warm_blocks, cold_blocks, cache_dir, policy, ...: the TierKV configuration (see
            include/tierkv.h); warm_blocks must hold one layer's stored blocks of the whole batch.
        accelerator: "cuda:N" or "emulated"; by default "cuda:N" when the model runs on GPU N and
            "emulated" (host memory standing in for the GPU tier, reported as such) on CPU.
        hierarchy: an open `tierkv.Hierarchy` to share between caches instead of opening one.
    """

    def __init__(self, config, hot_window=256, tokens_per_block=16, hot_blocks=64, warm_blocks=4096, cold_blocks=0,
                 cache_dir=None, accelerator=None, hierarchy=None, session=None, **tierkv_config):
        text_config = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
        self.num_layers = text_config.num_hidden_layers
        self.query_heads = text_config.num_attention_heads
        if hot_window < 0 or tokens_per_block < 1:
            raise InvalidArgument(_native.ERROR_INVALID_ARGUMENT,
                                  f"hot_window ({hot_window}) must be ≥ 0 and tokens_per_block ({tokens_per_block}) ≥ 1")
        self.hot_window = hot_window
        self.tokens_per_block = tokens_per_block
        self._tierkv_config = dict(hot_blocks=hot_blocks, warm_blocks=warm_blocks, cold_blocks=cold_blocks,
                                   **tierkv_config)
        if cache_dir is not None:
            self._tierkv_config["cache_dir"] = str(cache_dir)
        self._accelerator = accelerator
        self.hierarchy = hierarchy
        self._owns_hierarchy = hierarchy is None
        self.session = secrets.randbits(63) if session is None else int(session)
        super().__init__(layers=[TierKVLayer(self, index) for index in range(self.num_layers)])

    def _open(self, key_states):
        """Opens the hierarchy on the first update, when the KV dtype and shapes are known."""
        if self.hierarchy is not None:
            return
        if key_states.dtype not in _TORCH_DTYPES:
            raise InvalidArgument(_native.ERROR_INVALID_ARGUMENT,
                                  f"TierKVCache stores fp16, bf16 or fp32 KV; the model produces {key_states.dtype}")
        accelerator = self._accelerator
        if accelerator is None:
            device = key_states.device
            accelerator = f"cuda:{device.index or 0}" if device.type == "cuda" else "emulated"
        layout = {"layers": self.num_layers, "kv_heads": key_states.shape[1], "query_heads": self.query_heads,
                  "head_dim": key_states.shape[-1], "tokens_per_block": self.tokens_per_block,
                  "dtype": _TORCH_DTYPES[key_states.dtype]}
        self.hierarchy = Hierarchy(layout=layout, accelerator=accelerator, **self._tierkv_config)

    def _block_key(self, row, block, layer):
        return (self.session, (row << 40) | block, layer)

    def _sequence(self, row):
        return ((self.session & 0xFFFFFFFFFF) << 20) | row

    def stats(self):
        """TierKV's counters (see `tierkv.Hierarchy.stats`)."""
        return self.hierarchy.stats() if self.hierarchy is not None else {}

    def close(self):
        """Ends the cache's sequences and closes the hierarchy when this cache opened it."""
        if self.hierarchy is None or self.hierarchy.closed:
            return
        rows = max((layer.keys.shape[0] for layer in self.layers if layer.is_initialized), default=0)
        for row in range(rows):
            self.hierarchy.drop_sequence(self._sequence(row))
        if self._owns_hierarchy:
            self.hierarchy.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
