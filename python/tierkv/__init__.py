"""TierKV from Python: a tiered KV cache (accelerator / pinned host RAM / NVMe) over its C ABI.

    import numpy as np, tierkv
    with tierkv.Hierarchy(layout={"layers": 32, "kv_heads": 8, "query_heads": 32, "head_dim": 128,
                                  "tokens_per_block": 16, "dtype": "fp16"},
                          hot_blocks=1024, warm_blocks=8192, cold_blocks=65536,
                          cache_dir="/nvme/tierkv", accelerator="cuda:0") as cache:
        keys = cache.block_keys(tokens, layer=0)
        cache.store(keys[0], kv_block, position=0, sequence=7)      # kv_block: numpy, block_bytes bytes
        with cache.make_resident(keys, tier="warm") as request:
            request.wait()
            view = request.host_array(0)                             # zero-copy, valid inside the block

Every failure raises a `TierKVError` subclass carrying the library's message; nothing crashes the
interpreter on bad input (wrong dtypes, shapes, closed handles).
"""

import ctypes
import json
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from . import _native
from ._native import lib

__all__ = [
    "version", "abi_version", "Hierarchy", "Request", "Predictor", "BlockKey", "Layout", "Prefix", "PrefillPlacement",
    "merge_partials", "pack_keys", "KEY_DTYPE",
    "TierKVError", "InvalidArgument", "InvalidHandle", "NotFound", "CapacityExceeded", "CorruptionError",
    "SystemCallError", "Unsupported", "CUDAError", "ClosedError", "Timeout", "BufferTooSmall", "InternalError",
]


# ---- Errors ----

class TierKVError(Exception):
    """A failed TierKV call: `status` is the C status code, the text is the library's message."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


class InvalidArgument(TierKVError, ValueError):
    pass


class InvalidHandle(TierKVError, ValueError):
    pass


class NotFound(TierKVError, KeyError):
    def __str__(self):
        return self.message


class CapacityExceeded(TierKVError, MemoryError):
    pass


class CorruptionError(TierKVError, IOError):
    pass


class SystemCallError(TierKVError, OSError):
    pass


class Unsupported(TierKVError, NotImplementedError):
    pass


class CUDAError(TierKVError, RuntimeError):
    pass


class ClosedError(TierKVError, ValueError):
    pass


class Timeout(TierKVError, TimeoutError):
    pass


class BufferTooSmall(TierKVError, ValueError):
    pass


class InternalError(TierKVError, RuntimeError):
    pass


_ERRORS = {
    _native.ERROR_INVALID_ARGUMENT: InvalidArgument, _native.ERROR_INVALID_HANDLE: InvalidHandle,
    _native.ERROR_NOT_FOUND: NotFound, _native.ERROR_CAPACITY: CapacityExceeded,
    _native.ERROR_CORRUPTION: CorruptionError, _native.ERROR_SYSTEM: SystemCallError,
    _native.ERROR_UNSUPPORTED: Unsupported, _native.ERROR_CUDA: CUDAError, _native.ERROR_CLOSED: ClosedError,
    _native.ERROR_TIMEOUT: Timeout, _native.ERROR_BUFFER_TOO_SMALL: BufferTooSmall,
    _native.ERROR_INTERNAL: InternalError,
}


def _check(status):
    """Raises the exception for a non-OK status with this thread's message from the library."""
    if status != _native.OK:
        message = lib.tierkv_last_error().decode("utf-8", "replace")
        raise _ERRORS.get(status, TierKVError)(status, message)


def version():
    """The library's version string."""
    return lib.tierkv_version().decode()


def abi_version():
    return lib.tierkv_abi_version()


# ---- Values ----

class BlockKey(NamedTuple):
    """A block's identity: its 128-bit prefix hash and its layer. Any 128-bit value is a valid key."""
    prefix_high: int
    prefix_low: int
    layer: int

    def _struct(self):
        for name, value, bits in (("prefix_high", self.prefix_high, 64), ("prefix_low", self.prefix_low, 64),
                                  ("layer", self.layer, 32)):
            if not isinstance(value, (int, np.integer)) or not 0 <= int(value) < 2**bits:
                raise InvalidArgument(_native.ERROR_INVALID_ARGUMENT,
                                      f"BlockKey.{name} must be an integer in [0, 2**{bits}), got {value!r}")
        return _native.BlockKeyStruct(int(self.prefix_high), int(self.prefix_low), int(self.layer), 0)


_KEY_DTYPE = np.dtype([("prefix_high", "<u8"), ("prefix_low", "<u8"), ("layer", "<u4"), ("reserved", "<u4")])
assert _KEY_DTYPE.itemsize == ctypes.sizeof(_native.BlockKeyStruct)
# tierkv_block_location as a NumPy record, so a request's table is read into one array.
_LOCATION_DTYPE = np.dtype([("state", "<i4"), ("tier", "<i4"), ("device_address", "<u8"), ("host_pointer", "<u8"),
                            ("byte_count", "<u8")])
assert _LOCATION_DTYPE.itemsize == ctypes.sizeof(_native.BlockLocationStruct)


KEY_DTYPE = _KEY_DTYPE
"""The NumPy record of a packed key (tierkv_block_key): prefix_high, prefix_low, layer, reserved."""


def pack_keys(keys):
    """The keys packed into a NumPy array of KEY_DTYPE. Calls that take keys accept it as is, with no
    conversion: an engine that asks for the same blocks every step packs them once."""
    array, count = _key_array(keys)
    packed = np.frombuffer(array, dtype=_KEY_DTYPE, count=count).copy() if count else np.zeros(0, dtype=_KEY_DTYPE)
    return packed


def _key_array(keys):
    """A ctypes array of the keys for a call (built through NumPy: a Python loop of ctypes structs
    cost 2.7 ms per 1,024 keys). A packed array (pack_keys) passes straight through."""
    if isinstance(keys, np.ndarray) and keys.dtype == _KEY_DTYPE:
        if keys.ndim != 1:
            raise InvalidArgument(_native.ERROR_INVALID_ARGUMENT, f"packed keys have shape {keys.shape}; expected one dimension")
        if keys.size == 0:
            return (_native.BlockKeyStruct * 1)(), 0
        if not (keys.flags.c_contiguous and keys.flags.writeable):
            keys = keys.copy()
        # from_buffer keeps the array alive for as long as the ctypes view is.
        return (_native.BlockKeyStruct * keys.size).from_buffer(keys), int(keys.size)
    keys = list(keys)
    for index, key in enumerate(keys):
        if isinstance(key, BlockKey):
            continue
        if isinstance(key, tuple) and len(key) == 3:
            keys[index] = BlockKey(*key)
        else:
            raise InvalidArgument(_native.ERROR_INVALID_ARGUMENT,
                                  f"keys[{index}] is {type(key).__name__}; expected a tierkv.BlockKey")
    integers = (int, np.integer)
    if all(isinstance(h, integers) and isinstance(l, integers) and isinstance(y, integers) for h, l, y in keys):
        try:
            packed = np.array([(h, l, y, 0) for h, l, y in keys] or [(0, 0, 0, 0)], dtype=_KEY_DTYPE)
        except OverflowError:
            packed = None  # a field out of range: the per-key check below names it
        if packed is not None:
            return (_native.BlockKeyStruct * len(packed)).from_buffer(packed), len(keys)
    array = (_native.BlockKeyStruct * max(1, len(keys)))()
    for index, key in enumerate(keys):
        array[index] = key._struct()
    return array, len(keys)


_DTYPES = {"fp16": np.dtype(np.float16), "fp32": np.dtype(np.float32), "bf16": np.dtype(np.uint16),
           "fp8-e4m3": np.dtype(np.uint8)}


@dataclass(frozen=True)
class Layout:
    """The hierarchy's KV layout. A block is K then V, each [tokens_per_block, kv_heads, head_dim]."""
    layers: int
    kv_heads: int
    query_heads: int
    head_dim: int
    tokens_per_block: int
    dtype: str
    block_bytes: int

    @property
    def numpy_dtype(self):
        """The NumPy type a block is read and written as (bf16 as raw uint16 bits, fp8 as uint8)."""
        return _DTYPES[self.dtype]

    @property
    def block_shape(self):
        return (2, self.tokens_per_block, self.kv_heads, self.head_dim)


class Prefix(NamedTuple):
    in_hot: int
    in_hot_or_warm: int
    cached: int
    requested: int


class PrefillPlacement(NamedTuple):
    """What `Hierarchy.place_after_prefill` chose and moved."""
    chosen: int        # blocks chosen: moved to warm, or left in hot
    from_cold: int     # of the moved, those read back from cold
    request: object    # a warm `Request` pinning the moved blocks (its `keys`), or None when none moved


def _tokens(tokens):
    array = np.ascontiguousarray(tokens)
    if array.ndim != 1:
        raise InvalidArgument(_native.ERROR_INVALID_ARGUMENT, f"tokens must be one-dimensional, got shape {array.shape}")
    if array.size and (not np.issubdtype(array.dtype, np.integer) or array.min() < 0 or array.max() >= 2**32):
        raise InvalidArgument(_native.ERROR_INVALID_ARGUMENT, "tokens must be integers in [0, 2**32)")
    array = np.ascontiguousarray(array, dtype=np.uint32)
    return array, array.ctypes.data_as(ctypes.POINTER(ctypes.c_uint32))


def _float_pointer(array):
    return array.ctypes.data_as(ctypes.POINTER(ctypes.c_float))


# ---- Hierarchy ----

class Hierarchy:
    """The tiered cache. Takes the configuration of `tierkv_open` (see include/tierkv.h) as a dict
    or keyword arguments. Use as a context manager, or call `close()`. Thread-safe."""

    def __init__(self, config=None, **fields):
        configuration = dict(config or {})
        configuration.update(fields)
        handle = ctypes.c_void_p()
        _check(lib.tierkv_open(json.dumps(configuration).encode(), ctypes.byref(handle)))
        self._handle = handle
        layout = _native.LayoutStruct()
        _check(lib.tierkv_get_layout(self._handle, ctypes.byref(layout)))
        self.layout = Layout(layout.layers, layout.kv_heads, layout.query_heads, layout.head_dim,
                             layout.tokens_per_block, layout.dtype.decode(), layout.block_bytes)

    # Lifetime

    def close(self, flush=False):
        """Waits for transfers, optionally flushes every block to cold, and closes. Idempotent."""
        if self._handle is None:
            return
        handle, self._handle = self._handle, None
        _check(lib.tierkv_close(handle, 1 if flush else 0))

    @property
    def closed(self):
        return self._handle is None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        # A hierarchy dropped without close() is closed (no flush); at interpreter shutdown the
        # library may already be gone, so nothing may escape from here.
        if getattr(self, "_handle", None) is not None:
            try:
                self.close()
            except Exception:  # noqa: BLE001
                pass

    def _h(self):
        if self._handle is None:
            raise ClosedError(_native.ERROR_CLOSED, "the hierarchy is closed")
        return self._handle

    # Keys and lookup

    def block_keys(self, tokens, layer):
        """Keys of the full blocks of `tokens` at `layer`."""
        array, pointer = _tokens(tokens)
        capacity = max(1, array.size // self.layout.tokens_per_block)
        keys = (_native.BlockKeyStruct * capacity)()
        count = ctypes.c_size_t()
        _check(lib.tierkv_block_keys(self._h(), pointer, array.size, int(layer), keys, capacity, ctypes.byref(count)))
        return [BlockKey(k.prefix_high, k.prefix_low, k.layer) for k in keys[:count.value]]

    def lookup_prefix(self, tokens):
        """The longest cached prefix of `tokens`, in blocks, per tier."""
        array, pointer = _tokens(tokens)
        result = _native.PrefixStruct()
        _check(lib.tierkv_lookup_prefix(self._h(), pointer, array.size, ctypes.byref(result)))
        return Prefix(result.in_hot, result.in_hot_or_warm, result.cached, result.requested)

    def fastest_tier(self, key):
        """"hot", "warm" or "cold", or None when the block is not cached."""
        tier = ctypes.c_int32()
        status = lib.tierkv_fastest_tier(self._h(), ctypes.byref(BlockKey(*key)._struct()), ctypes.byref(tier))
        if status == _native.ERROR_NOT_FOUND:
            return None
        _check(status)
        return ("hot", "warm", "cold")[tier.value]

    # Storing and reading

    def _block_array(self, kv, name):
        if not isinstance(kv, np.ndarray):
            raise InvalidArgument(_native.ERROR_INVALID_ARGUMENT,
                                  f"{name} must be a numpy array, got {type(kv).__name__}")
        expected = self.layout.numpy_dtype
        if kv.dtype != expected:
            raise InvalidArgument(_native.ERROR_INVALID_ARGUMENT,
                                  f"{name} has dtype {kv.dtype}; the layout stores {self.layout.dtype} "
                                  f"(numpy {expected})")
        if kv.nbytes != self.layout.block_bytes:
            raise InvalidArgument(_native.ERROR_INVALID_ARGUMENT,
                                  f"{name} has shape {kv.shape} ({kv.nbytes} bytes); a block is "
                                  f"{self.layout.block_shape} = {self.layout.block_bytes} bytes")
        if not kv.flags["C_CONTIGUOUS"]:
            raise InvalidArgument(_native.ERROR_INVALID_ARGUMENT, f"{name} must be C-contiguous")
        return kv

    def store(self, key, kv, position, sequence=None):
        """Stores one block (K then V, [2, tokens_per_block, kv_heads, head_dim] of the layout's
        dtype) for `sequence` (None: cache only). Copies before returning. True when the bytes were
        stored, False when the key was already cached (prefix sharing)."""
        kv = self._block_array(kv, "kv")
        stored = ctypes.c_int32()
        _check(lib.tierkv_store(self._h(), ctypes.byref(BlockKey(*key)._struct()), int(position), kv.ctypes.data,
                                kv.nbytes, _sequence(sequence), ctypes.byref(stored)))
        return stored.value == 1

    def store_from_device(self, key, device_address, position, sequence=None):
        """Stores one block that is in accelerator memory (e.g. `tensor.data_ptr()` of a contiguous
        CUDA tensor of block_bytes bytes)."""
        stored = ctypes.c_int32()
        _check(lib.tierkv_store_from_device(self._h(), ctypes.byref(BlockKey(*key)._struct()), int(position),
                                            int(device_address), self.layout.block_bytes, _sequence(sequence),
                                            ctypes.byref(stored)))
        return stored.value == 1

    def store_many_from_device(self, keys, device_addresses, positions, sequence=None):
        """Stores many blocks that are in accelerator memory (`device_addresses[i]`, block_bytes each,
        e.g. `tensor.data_ptr()` of a layer's paged-cache slots) in one call: copied to host in
        batches of up to 64 blocks, one submission (cuMemcpyBatchAsync where the driver has it) and
        one wait each, instead of one copy and one wait per block. Returns a list of bools, True
        where a block was stored, False where its key was already cached. On an error the blocks
        before the one the message names are stored."""
        array, count = _key_array(keys)
        addresses = np.ascontiguousarray(np.asarray(device_addresses, dtype=np.uint64))
        positions = np.ascontiguousarray(np.asarray(positions, dtype=np.int64))
        for name, values in (("device_addresses", addresses), ("positions", positions)):
            if values.shape != (count,):
                raise InvalidArgument(_native.ERROR_INVALID_ARGUMENT,
                                      f"{name} has shape {values.shape}; expected ({count},), one per key")
        stored = np.zeros(max(count, 1), dtype=np.int32)
        done = ctypes.c_size_t()
        _check(lib.tierkv_store_many_from_device(
            self._h(), array, positions.ctypes.data_as(ctypes.POINTER(ctypes.c_int64)),
            addresses.ctypes.data_as(ctypes.POINTER(ctypes.c_uint64)), count, _sequence(sequence),
            stored.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)), ctypes.byref(done)))
        return [bool(value) for value in stored[:count]]

    def read(self, key, out=None):
        """A copy of the block from whichever tier holds it; raises NotFound when it is not cached."""
        if out is None:
            out = np.empty(self.layout.block_shape, dtype=self.layout.numpy_dtype)
        else:
            out = self._block_array(out, "out")
        _check(lib.tierkv_read(self._h(), ctypes.byref(BlockKey(*key)._struct()), out.ctypes.data, out.nbytes))
        return out

    # Residency

    def make_resident(self, keys, tier="hot", priority="demand"):
        """Starts making `keys` resident in "hot" or "warm" and pins them; returns a `Request`."""
        tiers = {"hot": _native.TIER_HOT, "warm": _native.TIER_WARM}
        priorities = {"demand": _native.PRIORITY_DEMAND, "prefetch": _native.PRIORITY_PREFETCH}
        if tier not in tiers:
            raise InvalidArgument(_native.ERROR_INVALID_ARGUMENT, f"tier must be 'hot' or 'warm', got {tier!r}")
        if priority not in priorities:
            raise InvalidArgument(_native.ERROR_INVALID_ARGUMENT,
                                  f"priority must be 'demand' or 'prefetch', got {priority!r}")
        if not isinstance(keys, np.ndarray):
            keys = list(keys)
        array, count = _key_array(keys)
        handle = ctypes.c_void_p()
        _check(lib.tierkv_make_resident(self._h(), array, count, tiers[tier], priorities[priority],
                                        ctypes.byref(handle)))
        return Request(self, handle, count, tier, keys)

    def report_attention(self, keys, mass):
        array, count = _key_array(keys)
        mass = np.ascontiguousarray(mass, dtype=np.float32)
        if mass.shape != (count,):
            raise InvalidArgument(_native.ERROR_INVALID_ARGUMENT, f"mass has shape {mass.shape}; expected ({count},)")
        _check(lib.tierkv_report_attention(self._h(), array, _float_pointer(mass), count))

    def place_after_prefill(self, layers, *, block_limit, coverage=0.95):
        """Places a prompt's blocks by the attention the prefill paid them, before decode starts.

        A prefill writes layer after layer, so at its end the first layers' blocks went to cold,
        whatever decode attends next. `layers` is one (keys, mass) pair per layer (and sequence):
        the attention the last prompt tokens paid each block (summed over their queries and
        heads, any scale). The blocks covering `coverage` of each layer's mass, at most
        `block_limit` in all (leave warm room for decode: half of it), are made resident in warm,
        read back from cold where needed; blocks in hot stay. The attention is reported to the
        eviction policy too. Release (or wait on, then release) the returned request."""
        layers = list(layers)
        keys, masses, ends = [], [], []
        for index, entry in enumerate(layers):
            if not (isinstance(entry, (tuple, list)) and len(entry) == 2):
                raise InvalidArgument(_native.ERROR_INVALID_ARGUMENT,
                                      f"layers[{index}] is {type(entry).__name__}; expected a (keys, mass) pair")
            layer_keys = list(entry[0])
            mass = np.ascontiguousarray(entry[1], dtype=np.float32)
            if mass.shape != (len(layer_keys),):
                raise InvalidArgument(_native.ERROR_INVALID_ARGUMENT,
                                      f"layers[{index}] mass has shape {mass.shape}; expected ({len(layer_keys)},)")
            keys += layer_keys
            masses.append(mass)
            ends.append(len(keys))
        if not isinstance(block_limit, (int, np.integer)) or block_limit < 0:
            raise InvalidArgument(_native.ERROR_INVALID_ARGUMENT,
                                  f"block_limit is {block_limit!r}; expected an integer >= 0")
        array, count = _key_array(keys)
        mass = np.concatenate(masses) if masses else np.zeros(1, dtype=np.float32)
        layer_ends = (ctypes.c_size_t * max(1, len(ends)))(*ends)
        moved_keys = (_native.BlockKeyStruct * max(1, count))()
        handle = ctypes.c_void_p()
        chosen, moved, from_cold = ctypes.c_size_t(), ctypes.c_size_t(), ctypes.c_size_t()
        _check(lib.tierkv_place_after_prefill(
            self._h(), array, _float_pointer(mass), count, layer_ends, len(ends), float(coverage), int(block_limit),
            ctypes.byref(handle), moved_keys, ctypes.byref(chosen), ctypes.byref(moved), ctypes.byref(from_cold)))
        request = None
        if handle.value is not None:
            request = Request(self, handle, moved.value, "warm",
                              keys=[BlockKey(k.prefix_high, k.prefix_low, k.layer) for k in moved_keys[:moved.value]])
        return PrefillPlacement(chosen.value, from_cold.value, request)

    def drop_sequence(self, sequence):
        _check(lib.tierkv_drop_sequence(self._h(), _sequence(sequence)))

    def flush(self):
        """Makes every block durable in cold; returns (written, failed)."""
        written, failed = ctypes.c_uint64(), ctypes.c_uint64()
        _check(lib.tierkv_flush(self._h(), ctypes.byref(written), ctypes.byref(failed)))
        return written.value, failed.value

    def stats(self):
        """Counters and occupancy as a dict."""
        stats = _native.StatsStruct()
        stats.struct_size = ctypes.sizeof(_native.StatsStruct)
        _check(lib.tierkv_get_stats(self._h(), ctypes.byref(stats)))
        result = {}
        for name, kind in _native.StatsStruct._fields_:
            value = getattr(stats, name)
            if kind is _native.TierStatsStruct:
                value = {field: getattr(value, field) for field, _ in _native.TierStatsStruct._fields_}
            result[name] = value
        result.pop("struct_size")
        result["cold_is_buffered"] = bool(result["cold_is_buffered"])
        result["accelerator_is_emulated"] = bool(result["accelerator_is_emulated"])
        return result

    # CPU attention

    def attend_warm(self, keys, query, token_counts=None, scale=None):
        """Decode attention of `query` ([query_heads, head_dim], fp32) over `keys` in token order, on
        CPU threads from the warm tier. Returns (output [query_heads, head_dim], m [query_heads],
        l [query_heads]): a partial that merges exactly with others (`merge_partials`)."""
        layout = self.layout
        query = np.ascontiguousarray(query, dtype=np.float32)
        if query.shape != (layout.query_heads, layout.head_dim):
            raise InvalidArgument(_native.ERROR_INVALID_ARGUMENT,
                                  f"query has shape {query.shape}; expected ({layout.query_heads}, {layout.head_dim})")
        array, count = _key_array(keys)
        counts_pointer = None
        if token_counts is not None:
            counts = np.ascontiguousarray(token_counts, dtype=np.int32)
            if counts.shape != (count,):
                raise InvalidArgument(_native.ERROR_INVALID_ARGUMENT,
                                      f"token_counts has shape {counts.shape}; expected ({count},)")
            counts_pointer = counts.ctypes.data_as(ctypes.POINTER(ctypes.c_int32))
        output = np.empty((layout.query_heads, layout.head_dim), dtype=np.float32)
        maxima = np.empty(layout.query_heads, dtype=np.float32)
        sums = np.empty(layout.query_heads, dtype=np.float32)
        _check(lib.tierkv_attend_warm(self._h(), array, count, counts_pointer, _float_pointer(query), query.size,
                                      float(scale or 0), _float_pointer(output), _float_pointer(maxima),
                                      _float_pointer(sums)))
        return output, maxima, sums

    # Prediction

    _SCORINGS = {"default": _native.SCORING_DEFAULT, "bound": _native.SCORING_BOUND,
                 "bound+moment": _native.SCORING_BOUND_MOMENT, "sketch": _native.SCORING_SKETCH}

    def predict_mass(self, keys, query, *, resident=(), tail_keys=None, token_counts=None, scale=None,
                     scoring="default", missing="raise"):
        """The share of a layer's attention each of `keys` (candidate blocks of one layer) is predicted
        to receive from `query` ([query_heads, head_dim], post-RoPE: the layer's query, or the freshest
        hint for it), from the key summaries and sketches the hierarchy keeps (open it with
        key_summaries="from-keys"). Returns a float32 array, one mass per key, summing to at most 1.

        `resident`: blocks the layer also attends that are not candidates (sinks, recent window);
        `tail_keys`: [tokens, kv_heads, head_dim] keys no stored block holds (the partial block, the
        current token). With sketch scoring both share each head's softmax, as in the attention.
        `scoring`: "default" (sketch when the hierarchy keeps sketches), "bound", "bound+moment" or
        "sketch". `missing`: "raise" (NotFound for a block the hierarchy does not hold) or "nan" (its
        mass is NaN). Nothing is moved: pass the best blocks to `make_resident`."""
        if missing not in ("raise", "nan"):
            raise InvalidArgument(_native.ERROR_INVALID_ARGUMENT, f"missing is {missing!r}; expected 'raise' or 'nan'")
        arguments, count = self._prediction_arguments(keys, query, resident, tail_keys, token_counts, scoring)
        mass = np.empty(count, dtype=np.float32)
        known = np.empty(count, dtype=np.int32) if missing == "nan" else None
        _check(lib.tierkv_predict_mass(
            *arguments, float(scale or 0), self._SCORINGS[scoring], _float_pointer(mass),
            known.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)) if known is not None else None))
        if known is not None:
            mass[known == 0] = np.nan
        return mass

    def _prediction_arguments(self, keys, query, resident, tail_keys, token_counts, scoring):
        """The C arguments predict_mass and prefetch share, up to query_count, checked, and the
        candidate count. The pointers keep their arrays alive."""
        query = self._query_array(query, "query")
        if scoring not in self._SCORINGS:
            raise InvalidArgument(_native.ERROR_INVALID_ARGUMENT,
                                  f"scoring is {scoring!r}; expected one of {', '.join(self._SCORINGS)}")
        candidates, count = self._candidate_arguments(keys, resident, tail_keys, token_counts)
        (array, count, counts_pointer, resident_array, resident_count, tail_pointer, tail_tokens) = candidates
        return (self._h(), array, count, counts_pointer, resident_array, resident_count, tail_pointer, tail_tokens,
                _float_pointer(query), query.size), count

    def _query_array(self, query, name):
        """A query as a contiguous float32 [query_heads, head_dim] array, checked."""
        layout = self.layout
        query = np.ascontiguousarray(query, dtype=np.float32)
        if query.shape != (layout.query_heads, layout.head_dim):
            raise InvalidArgument(_native.ERROR_INVALID_ARGUMENT,
                                  f"{name} has shape {query.shape}; expected ({layout.query_heads}, {layout.head_dim})")
        return query

    def _candidate_arguments(self, keys, resident, tail_keys, token_counts):
        """The candidates' C arguments (keys, count, token counts, resident keys and count, tail keys
        and tokens), checked, and the candidate count. The pointers keep their arrays alive."""
        layout = self.layout
        array, count = _key_array(keys)
        resident_array, resident_count = _key_array(resident)
        counts_pointer = None
        if token_counts is not None:
            counts = np.ascontiguousarray(token_counts, dtype=np.int32)
            if counts.shape != (count,):
                raise InvalidArgument(_native.ERROR_INVALID_ARGUMENT,
                                      f"token_counts has shape {counts.shape}; expected ({count},)")
            counts_pointer = counts.ctypes.data_as(ctypes.POINTER(ctypes.c_int32))
        tail = np.zeros((0, layout.kv_heads, layout.head_dim), dtype=np.float32)
        if tail_keys is not None:
            tail = np.ascontiguousarray(tail_keys, dtype=np.float32)
            if tail.ndim != 3 or tail.shape[1:] != (layout.kv_heads, layout.head_dim):
                raise InvalidArgument(_native.ERROR_INVALID_ARGUMENT,
                                      f"tail_keys has shape {tail.shape}; expected (tokens, {layout.kv_heads}, "
                                      f"{layout.head_dim})")
        return (array, count, counts_pointer, resident_array, resident_count,
                _float_pointer(tail) if tail.shape[0] else None, tail.shape[0]), count

    def prefetch(self, keys, query, *, budget_blocks, staging_blocks=0, seconds_until_needed=None,
                 host_to_device_bytes_per_s=0.0, cold_read_bytes_per_s=0.0, coverage=1.0, resident=(),
                 tail_keys=None, token_counts=None, scale=None, scoring="default"):
        """Predicts `keys` as predict_mass does and moves the best of them: up to `budget_blocks`
        made resident in hot (pinned until the ticket is settled), and below them up to
        `staging_blocks` (counting those) staged from cold into warm, at prefetch priority, best first,
        stopping once the chosen blocks hold `coverage` of the predicted mass. With
        `seconds_until_needed`, only blocks expected to arrive in time (planned with the two link
        rates, then required) move. Blocks the hierarchy does not hold are skipped and counted.
        Returns a PrefetchTicket: `settle()` it with the attention the layer computed, or `abandon()` it."""
        arguments, count = self._prediction_arguments(keys, query, resident, tail_keys, token_counts, scoring)
        options = _prefetch_options(budget_blocks, staging_blocks, seconds_until_needed, host_to_device_bytes_per_s,
                                    cold_read_bytes_per_s, coverage)
        options.scale = float(scale or 0)
        options.scoring = self._SCORINGS[scoring]
        handle = ctypes.c_void_p()
        moved = [ctypes.c_uint64() for _ in range(3)]
        _check(lib.tierkv_prefetch(*arguments, ctypes.byref(options), ctypes.byref(handle),
                                   *(ctypes.byref(value) for value in moved)))
        return PrefetchTicket(self, handle, count, *(value.value for value in moved))

    def prefetch_mass(self, keys, mass, *, budget_blocks, staging_blocks=0, seconds_until_needed=None,
                      host_to_device_bytes_per_s=0.0, cold_read_bytes_per_s=0.0, coverage=1.0):
        """prefetch() from masses the engine predicted itself (its own attention history, its own mix
        of predictors, ...) instead of a query: `mass` holds one finite value ≥ 0 per key, higher
        moved first; `coverage` is a share of their sum. The keys are one layer's; no key summaries
        are needed. Returns a PrefetchTicket, settled or abandoned as prefetch()'s."""
        array, count = _key_array(keys)
        masses = np.ascontiguousarray(mass, dtype=np.float32)
        if masses.shape != (count,):
            raise InvalidArgument(_native.ERROR_INVALID_ARGUMENT, f"mass has shape {masses.shape}; expected ({count},)")
        options = _prefetch_options(budget_blocks, staging_blocks, seconds_until_needed, host_to_device_bytes_per_s,
                                    cold_read_bytes_per_s, coverage)
        handle = ctypes.c_void_p()
        moved = [ctypes.c_uint64() for _ in range(3)]
        _check(lib.tierkv_prefetch_mass(self._h(), array, count, _float_pointer(masses), ctypes.byref(options),
                                        ctypes.byref(handle), *(ctypes.byref(value) for value in moved)))
        return PrefetchTicket(self, handle, count, *(value.value for value in moved))

    _PLACES = ("hot", "fetch", "cpu", "skip", "missing")

    def plan_layer(self, keys, *, host_to_device_bytes_per_s, cold_read_bytes_per_s, cpu_attention_bytes_per_s=0.0,
                   gpu_seconds=0.0, mass=None, skip_below_mass=0.0):
        """Where each block one layer needs gets its attention computed, from a cost model of the link
        rates and the CPU attention rate (0: CPU attention off): "hot" (already there), "fetch" (to
        hot for the GPU), "cpu" (attend it where it sits in warm: attend_warm), "skip" (below
        `skip_below_mass` of the layer's mass, approximate mode only, which needs `mass`) or
        "missing". Returns (decisions, estimated_seconds). Nothing moves."""
        array, count = _key_array(keys)
        mass_pointer = None
        if mass is not None:
            masses = np.ascontiguousarray(mass, dtype=np.float32)
            if masses.shape != (count,):
                raise InvalidArgument(_native.ERROR_INVALID_ARGUMENT, f"mass has shape {masses.shape}; expected ({count},)")
            mass_pointer = _float_pointer(masses)
        options = _native.PlacementOptionsStruct()
        options.struct_size = ctypes.sizeof(_native.PlacementOptionsStruct)
        options.host_to_device_bytes_per_s = float(host_to_device_bytes_per_s)
        options.cold_read_bytes_per_s = float(cold_read_bytes_per_s)
        options.cpu_attention_bytes_per_s = float(cpu_attention_bytes_per_s)
        options.gpu_seconds = float(gpu_seconds)
        options.skip_below_mass = float(skip_below_mass)
        decisions = np.empty(count, dtype=np.int32)
        estimated = ctypes.c_double()
        _check(lib.tierkv_plan_layer(self._h(), array, count, mass_pointer, ctypes.byref(options),
                                     decisions.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)), ctypes.byref(estimated)))
        return [self._PLACES[value] for value in decisions], estimated.value

    def prefetch_stats(self):
        """What prefetch did and how good it was, over settled tickets: a dict with counts,
        wasted_bytes, precision, recall and timeliness."""
        stats = _native.PrefetchStatsStruct()
        stats.struct_size = ctypes.sizeof(_native.PrefetchStatsStruct)
        _check(lib.tierkv_get_prefetch_stats(self._h(), ctypes.byref(stats)))
        return {name: getattr(stats, name) for name, _ in _native.PrefetchStatsStruct._fields_ if name != "struct_size"}

    def rebuild_key_summaries(self, batch_blocks=None):
        """Computes the key summaries of every block held without one (after a restart, the blocks
        found in cold), passing them through warm `batch_blocks` at a time (default: a quarter of
        warm_blocks). Returns a dict: missing, rebuilt, failed (blocks that could not be read back)."""
        if batch_blocks is not None and (not isinstance(batch_blocks, (int, np.integer)) or batch_blocks < 1):
            raise InvalidArgument(_native.ERROR_INVALID_ARGUMENT, f"batch_blocks is {batch_blocks!r}; expected an integer ≥ 1")
        counts = [ctypes.c_uint64() for _ in range(3)]
        _check(lib.tierkv_rebuild_key_summaries(self._h(), int(batch_blocks or 0), *(ctypes.byref(c) for c in counts)))
        return dict(zip(("missing", "rebuilt", "failed"), (c.value for c in counts)))


    def predictor(self, *, speculative_weight=0.5, query_weight=0.3, history_weight=0.2, history_decay=0.9,
                  recency_weight=0.2, recency_window_blocks=8.0, adapt_top_k=0, adapt_rate=100.0, adapt_memory=0.9,
                  scale=None, scoring="default"):
        """A Predictor: a mix of a query speculated for the layer from an earlier one, the freshest
        query the engine has for it (both scored on the key summaries, as predict_mass does) and the
        layer's attention history (H2O: observed mass decayed by `history_decay` per step of the
        layer, blended with recency), with these weights. With `adapt_top_k` (set it to the blocks
        a layer can have in hot) each layer's weights follow how well each part predicted the
        attention observed since, by the mass coverage of its top-k blocks (exponential weights:
        `adapt_rate`, `adapt_memory`). The defaults are the simulator's. The query parts need key
        summaries; for history alone set speculative_weight and query_weight to 0. Closing the
        hierarchy releases it."""
        if scoring not in self._SCORINGS:
            raise InvalidArgument(_native.ERROR_INVALID_ARGUMENT,
                                  f"scoring is {scoring!r}; expected one of {', '.join(self._SCORINGS)}")
        if not isinstance(adapt_top_k, (int, np.integer)) or not 0 <= adapt_top_k < 2**32:
            raise InvalidArgument(_native.ERROR_INVALID_ARGUMENT, f"adapt_top_k is {adapt_top_k!r}; expected an integer ≥ 0")
        options = _native.PredictorOptionsStruct()
        options.struct_size = ctypes.sizeof(_native.PredictorOptionsStruct)
        for name, value in (("speculative_weight", speculative_weight), ("query_weight", query_weight),
                            ("history_weight", history_weight), ("history_decay", history_decay),
                            ("recency_weight", recency_weight), ("recency_window_blocks", recency_window_blocks),
                            ("adapt_rate", adapt_rate), ("adapt_memory", adapt_memory)):
            setattr(options, name, float(value))
        options.adapt_top_k = int(adapt_top_k)
        uses_queries = speculative_weight > 0 or query_weight > 0
        options.scale = float(scale or 0)
        options.scoring = self._SCORINGS[scoring] if uses_queries else 0
        handle = ctypes.c_void_p()
        _check(lib.tierkv_predictor_create(self._h(), ctypes.byref(options), ctypes.byref(handle)))
        return Predictor(self, handle)


class Predictor:
    """A learned mix of predictors for one hierarchy (`Hierarchy.predictor`). Per layer and step:
    `predict` the coming layer's candidates, prefetch the best (`Hierarchy.prefetch_mass`), and once
    the layer ran, `observe` the attention it computed."""

    _PARTS = ("speculative", "query", "history")

    def __init__(self, hierarchy, handle):
        self._hierarchy = hierarchy
        self._handle = handle

    def _h(self):
        if self._handle is None:
            raise InvalidHandle(_native.ERROR_INVALID_HANDLE, "the predictor was released")
        return self._handle

    def predict(self, keys, *, speculated_query=None, query=None, positions=None, newest_position=None, resident=(),
                tail_keys=None, token_counts=None, missing="raise"):
        """The share of the layer's attention each of `keys` (candidate blocks of one layer) is
        predicted to receive: a float32 array summing to at most 1, all 0 when no part had anything
        to go on. `speculated_query` and `query` ([query_heads, head_dim], post-RoPE; each may be
        None: that part is left out) are the two hints; `positions` each candidate's block index in
        its sequence (default: their order) and `newest_position` the sequence's newest block
        (default: the last candidate's), for recency. `resident`, `tail_keys`, `token_counts` and
        `missing` as for Hierarchy.predict_mass."""
        if missing not in ("raise", "nan"):
            raise InvalidArgument(_native.ERROR_INVALID_ARGUMENT, f"missing is {missing!r}; expected 'raise' or 'nan'")
        hierarchy = self._hierarchy
        hints = [None if value is None else hierarchy._query_array(value, name)
                 for name, value in (("speculated_query", speculated_query), ("query", query))]
        candidates, count = hierarchy._candidate_arguments(keys, resident, tail_keys, token_counts)
        (array, count, counts_pointer, resident_array, resident_count, tail_pointer, tail_tokens) = candidates
        positions_pointer = None
        if positions is not None:
            positions = np.ascontiguousarray(positions, dtype=np.int32)
            if positions.shape != (count,):
                raise InvalidArgument(_native.ERROR_INVALID_ARGUMENT,
                                      f"positions has shape {positions.shape}; expected ({count},)")
            positions_pointer = positions.ctypes.data_as(ctypes.POINTER(ctypes.c_int32))
        newest = -1 if newest_position is None else int(newest_position)
        if not -1 <= newest < 2**31:
            raise InvalidArgument(_native.ERROR_INVALID_ARGUMENT, f"newest_position is {newest_position!r}; expected ≥ 0")
        layout = hierarchy.layout
        mass = np.empty(count, dtype=np.float32)
        known = np.empty(count, dtype=np.int32) if missing == "nan" else None
        _check(lib.tierkv_predictor_predict(
            self._h(), array, count, counts_pointer, positions_pointer, newest, resident_array, resident_count,
            tail_pointer, tail_tokens, *(None if hint is None else _float_pointer(hint) for hint in hints),
            layout.query_heads * layout.head_dim, _float_pointer(mass),
            known.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)) if known is not None else None))
        if known is not None:
            mass[known == 0] = np.nan
        return mass

    def observe(self, keys, mass):
        """After the layer ran: the attention each of `keys` (one layer's blocks, resident ones
        included) received. It feeds the history and, with adaptation, scores the last prediction."""
        array, count = _key_array(keys)
        masses = np.ascontiguousarray(mass, dtype=np.float32)
        if masses.shape != (count,):
            raise InvalidArgument(_native.ERROR_INVALID_ARGUMENT, f"mass has shape {masses.shape}; expected ({count},)")
        _check(lib.tierkv_predictor_observe(self._h(), array, count, _float_pointer(masses)))

    def weights(self, layer):
        """The weights the next prediction for `layer` uses: {"speculative", "query", "history"}."""
        if not isinstance(layer, (int, np.integer)) or not 0 <= layer < 2**32:
            raise InvalidArgument(_native.ERROR_INVALID_ARGUMENT, f"layer is {layer!r}; expected an integer ≥ 0")
        out = np.empty(3, dtype=np.float32)
        _check(lib.tierkv_predictor_weights(self._h(), int(layer), _float_pointer(out)))
        return dict(zip(self._PARTS, (float(value) for value in out)))

    def forget(self, keys):
        """Forgets the history of blocks that left the cache (a dropped sequence)."""
        array, count = _key_array(keys)
        _check(lib.tierkv_predictor_forget(self._h(), array, count))

    def release(self):
        """Frees the predictor (closing the hierarchy does too)."""
        if self._handle is not None:
            handle, self._handle = self._handle, None
            if not self._hierarchy.closed:
                _check(lib.tierkv_predictor_release(handle))


def _prefetch_options(budget_blocks, staging_blocks, seconds_until_needed, host_to_device_bytes_per_s,
                      cold_read_bytes_per_s, coverage):
    """A tierkv_prefetch_options with scale and scoring 0."""
    for name, value in (("budget_blocks", budget_blocks), ("staging_blocks", staging_blocks)):
        if not isinstance(value, (int, np.integer)) or not 0 <= value < 2**32:
            raise InvalidArgument(_native.ERROR_INVALID_ARGUMENT, f"{name} is {value!r}; expected an integer ≥ 0")
    options = _native.PrefetchOptionsStruct()
    options.struct_size = ctypes.sizeof(_native.PrefetchOptionsStruct)
    options.budget_blocks = int(budget_blocks)
    options.staging_blocks = int(staging_blocks)
    options.seconds_until_needed = -1.0 if seconds_until_needed is None else float(seconds_until_needed)
    options.host_to_device_bytes_per_s = float(host_to_device_bytes_per_s)
    options.cold_read_bytes_per_s = float(cold_read_bytes_per_s)
    options.coverage = float(coverage)
    return options


def _sequence(sequence):
    if sequence is None:
        return _native.NO_SEQUENCE
    if not isinstance(sequence, (int, np.integer)) or not 0 <= int(sequence) < _native.NO_SEQUENCE:
        raise InvalidArgument(_native.ERROR_INVALID_ARGUMENT,
                              f"sequence must be an integer in [0, 2**64 - 1), got {sequence!r}")
    return int(sequence)


class PrefetchTicket:
    """The moves `Hierarchy.prefetch` started for one coming layer: `fetched` blocks sent to hot,
    `staged` read into warm, `unknown` candidates the hierarchy does not hold. Settle it when the
    layer has run (before its own demand request), or abandon it."""

    def __init__(self, hierarchy, handle, count, fetched, staged, unknown):
        self._hierarchy = hierarchy
        self._handle = handle
        self._count = count
        self.fetched = fetched
        self.staged = staged
        self.unknown = unknown

    def _h(self):
        if self._handle is None:
            raise InvalidHandle(_native.ERROR_INVALID_HANDLE, "the prefetch ticket was settled or abandoned")
        return self._handle

    def wait(self, timeout=None):
        """Blocks until the ticket's moves have landed (or failed); raises Timeout."""
        _check(lib.tierkv_prefetch_wait(self._h(), -1.0 if timeout is None else float(timeout)))

    def settle(self, actual_mass, needed=None, top_k=0):
        """Records what the prediction was worth against `actual_mass` (the attention each candidate
        received, in the order given to prefetch) and releases the pins. `needed`: booleans, the
        candidates the layer used (default: its top_k blocks); `top_k`: the k of the recall (0: the
        ticket's budget_blocks)."""
        mass = np.ascontiguousarray(actual_mass, dtype=np.float32)
        if mass.shape != (self._count,):
            raise InvalidArgument(_native.ERROR_INVALID_ARGUMENT,
                                  f"actual_mass has shape {mass.shape}; expected ({self._count},)")
        flags = None
        if needed is not None:
            flags = np.ascontiguousarray(needed, dtype=np.int32)
            if flags.shape != (self._count,):
                raise InvalidArgument(_native.ERROR_INVALID_ARGUMENT,
                                      f"needed has shape {flags.shape}; expected ({self._count},)")
        if not isinstance(top_k, (int, np.integer)) or top_k < 0:
            raise InvalidArgument(_native.ERROR_INVALID_ARGUMENT, f"top_k is {top_k!r}; expected an integer ≥ 0")
        _check(lib.tierkv_prefetch_settle(
            self._h(), _float_pointer(mass),
            flags.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)) if flags is not None else None, int(top_k)))
        self._handle = None

    def abandon(self):
        """Releases a ticket whose layer will not run; its queued moves are withdrawn."""
        if self._handle is not None:
            _check(lib.tierkv_prefetch_abandon(self._handle))
            self._handle = None


class Request:
    """Blocks being made resident, pinned until `release()` (or the end of a `with` block)."""

    def __init__(self, hierarchy, handle, count, tier, keys=None):
        self._hierarchy = hierarchy
        self._handle = handle
        self._count = count
        self.tier = tier
        self.keys = keys  # the blocks, in index order

    def _h(self):
        if self._handle is None:
            raise InvalidHandle(_native.ERROR_INVALID_HANDLE, "the request was released")
        return self._handle

    def __len__(self):
        return self._count

    def wait(self, timeout=None):
        """Blocks (without holding the GIL) until every block arrived or failed; raises Timeout."""
        _check(lib.tierkv_request_wait(self._h(), -1.0 if timeout is None else float(timeout)))
        return self

    @property
    def ready(self):
        ready = ctypes.c_int32()
        _check(lib.tierkv_request_poll(self._h(), ctypes.byref(ready)))
        return ready.value == 1

    def state(self, index):
        """"pending", "ready", "missing" or "failed" for block `index`."""
        return self._STATES[self._location(index).state]

    def _location(self, index):
        if not isinstance(index, (int, np.integer)) or not 0 <= int(index) < self._count:
            raise InvalidArgument(_native.ERROR_INVALID_ARGUMENT,
                                  f"index {index!r} is out of range; the request has {self._count} blocks")
        location = _native.BlockLocationStruct()
        _check(lib.tierkv_request_block(self._h(), int(index), ctypes.byref(location)))
        return location

    _STATES = ("pending", "ready", "missing", "failed")

    def _locations(self):
        """Every block's location from one call (one lock, not one per block), as a NumPy record array."""
        locations = np.zeros(self._count, dtype=_LOCATION_DTYPE)
        pointer = ctypes.cast(locations.ctypes.data, ctypes.POINTER(_native.BlockLocationStruct))
        _check(lib.tierkv_request_blocks(self._h(), 0, self._count, pointer))
        return locations

    def states(self):
        """The state of every block, in key order: a list of "pending", "ready", "missing", "failed"."""
        return [self._STATES[state] for state in self._locations()["state"].tolist()]

    def _require_all_ready(self, locations):
        not_ready = np.flatnonzero(locations["state"] != _native.BLOCK_READY)
        if not_ready.size:
            index = int(not_ready[0])
            raise NotFound(_native.ERROR_NOT_FOUND, f"block {index} is {self._STATES[locations['state'][index]]}, not ready")

    def device_addresses(self):
        """Every block's address in accelerator memory (hot requests) as a uint64 NumPy array, in key
        order, from one call: a layer's block table. Raises NotFound naming the first block that is
        not ready. Valid until release."""
        if self.tier != "hot":
            raise InvalidArgument(_native.ERROR_INVALID_ARGUMENT, "device_addresses is for hot requests; this one is warm")
        locations = self._locations()
        self._require_all_ready(locations)
        return locations["device_address"].copy()

    def host_arrays(self):
        """Zero-copy, read-only NumPy views of every block of a warm request (as host_array), in key
        order, from one call. Raises NotFound naming the first block that is not ready. Valid until
        release."""
        if self.tier != "warm":
            raise InvalidArgument(_native.ERROR_INVALID_ARGUMENT, "host_arrays is for warm requests; this one is hot")
        locations = self._locations()
        self._require_all_ready(locations)
        return [self._host_view(pointer, size) for pointer, size in
                zip(locations["host_pointer"].tolist(), locations["byte_count"].tolist())]

    def _host_view(self, pointer, byte_count):
        layout = self._hierarchy.layout
        buffer = (ctypes.c_char * byte_count).from_address(pointer)
        view = np.frombuffer(buffer, dtype=layout.numpy_dtype).reshape(layout.block_shape)
        view.flags.writeable = False
        return view

    def device_address(self, index):
        """The block's address in accelerator memory (hot requests), valid until release."""
        location = self._location(index)
        if self.tier != "hot":
            raise InvalidArgument(_native.ERROR_INVALID_ARGUMENT, "device_address is for hot requests; this one is warm")
        if location.state != _native.BLOCK_READY:
            raise NotFound(_native.ERROR_NOT_FOUND, f"block {index} is {self.state(index)}, not ready")
        return location.device_address

    def host_array(self, index):
        """A zero-copy NumPy view [2, tokens_per_block, kv_heads, head_dim] of a warm block's pinned
        host memory, read-only, valid until release (copy it to keep it)."""
        location = self._location(index)
        if self.tier != "warm":
            raise InvalidArgument(_native.ERROR_INVALID_ARGUMENT, "host_array is for warm requests; this one is hot")
        if location.state != _native.BLOCK_READY:
            raise NotFound(_native.ERROR_NOT_FOUND, f"block {index} is {self.state(index)}, not ready")
        return self._host_view(location.host_pointer, location.byte_count)

    def release(self):
        """Unpins the blocks. Idempotent."""
        if self._handle is None:
            return
        handle, self._handle = self._handle, None
        if not self._hierarchy.closed:
            _check(lib.tierkv_request_release(handle))

    def cancel(self):
        """Releases and withdraws queued moves nothing else wants; returns how many were withdrawn."""
        handle = self._h()
        self._handle = None
        withdrawn = ctypes.c_size_t()
        _check(lib.tierkv_request_cancel(handle, ctypes.byref(withdrawn)))
        return withdrawn.value

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def merge_partials(outputs, maxima, sums):
    """Merges partials: outputs [parts, heads, head_dim], maxima and sums [parts, heads]. Exact."""
    outputs = np.ascontiguousarray(outputs, dtype=np.float32)
    maxima = np.ascontiguousarray(maxima, dtype=np.float32)
    sums = np.ascontiguousarray(sums, dtype=np.float32)
    if outputs.ndim != 3 or maxima.shape != outputs.shape[:2] or sums.shape != outputs.shape[:2]:
        raise InvalidArgument(_native.ERROR_INVALID_ARGUMENT,
                              f"outputs {outputs.shape}, maxima {maxima.shape}, sums {sums.shape}: expected "
                              "[parts, heads, head_dim], [parts, heads], [parts, heads]")
    parts, heads, head_dim = outputs.shape
    output = np.empty((heads, head_dim), dtype=np.float32)
    maximum = np.empty(heads, dtype=np.float32)
    total = np.empty(heads, dtype=np.float32)
    _check(lib.tierkv_merge_partials(parts, heads, head_dim, _float_pointer(outputs), _float_pointer(maxima),
                                     _float_pointer(sums), _float_pointer(output), _float_pointer(maximum),
                                     _float_pointer(total)))
    return output, maximum, total
