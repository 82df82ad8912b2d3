"""ctypes declarations of include/tierkv.h. Kept in step with the header: tests compare them."""

import ctypes
import ctypes.util
import os
from pathlib import Path

ABI_VERSION = 1

OK = 0
ERROR_INVALID_ARGUMENT = 1
ERROR_INVALID_HANDLE = 2
ERROR_NOT_FOUND = 3
ERROR_CAPACITY = 4
ERROR_CORRUPTION = 5
ERROR_SYSTEM = 6
ERROR_UNSUPPORTED = 7
ERROR_CUDA = 8
ERROR_CLOSED = 9
ERROR_TIMEOUT = 10
ERROR_BUFFER_TOO_SMALL = 11
ERROR_INTERNAL = 12

TIER_HOT, TIER_WARM, TIER_COLD = 0, 1, 2
PRIORITY_DEMAND, PRIORITY_PREFETCH = 0, 1
NO_SEQUENCE = 2**64 - 1
BLOCK_PENDING, BLOCK_READY, BLOCK_MISSING, BLOCK_FAILED = 0, 1, 2, 3
SCORING_DEFAULT, SCORING_BOUND, SCORING_BOUND_MOMENT, SCORING_SKETCH = 0, 1, 2, 3
PLACE_IN_HOT, PLACE_FETCH, PLACE_CPU, PLACE_SKIP, PLACE_MISSING = 0, 1, 2, 3, 4


class BlockKeyStruct(ctypes.Structure):
    _fields_ = [("prefix_high", ctypes.c_uint64), ("prefix_low", ctypes.c_uint64), ("layer", ctypes.c_uint32),
                ("reserved", ctypes.c_uint32)]


class LayoutStruct(ctypes.Structure):
    _fields_ = [("layers", ctypes.c_int32), ("kv_heads", ctypes.c_int32), ("query_heads", ctypes.c_int32),
                ("head_dim", ctypes.c_int32), ("tokens_per_block", ctypes.c_int32), ("dtype_size", ctypes.c_int32),
                ("dtype", ctypes.c_char * 16), ("block_bytes", ctypes.c_uint64)]


class PrefixStruct(ctypes.Structure):
    _fields_ = [("in_hot", ctypes.c_uint64), ("in_hot_or_warm", ctypes.c_uint64), ("cached", ctypes.c_uint64),
                ("requested", ctypes.c_uint64)]


class BlockLocationStruct(ctypes.Structure):
    _fields_ = [("state", ctypes.c_int32), ("tier", ctypes.c_int32), ("device_address", ctypes.c_uint64),
                ("host_pointer", ctypes.c_void_p), ("byte_count", ctypes.c_uint64)]


class TierStatsStruct(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in
                ("capacity_blocks", "resident_blocks", "pinned_blocks", "hits", "misses")]


class PrefetchOptionsStruct(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint64), ("budget_blocks", ctypes.c_uint32), ("staging_blocks", ctypes.c_uint32),
                ("seconds_until_needed", ctypes.c_double), ("host_to_device_bytes_per_s", ctypes.c_double),
                ("cold_read_bytes_per_s", ctypes.c_double), ("coverage", ctypes.c_float), ("scale", ctypes.c_float),
                ("scoring", ctypes.c_int32), ("reserved", ctypes.c_int32)]


class PredictorOptionsStruct(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint64)]
    _fields_ += [(name, ctypes.c_float) for name in ("speculative_weight", "query_weight", "history_weight",
                                                      "history_decay", "recency_weight", "recency_window_blocks")]
    _fields_ += [("adapt_top_k", ctypes.c_uint32), ("adapt_rate", ctypes.c_float), ("adapt_memory", ctypes.c_float),
                 ("scale", ctypes.c_float), ("scoring", ctypes.c_int32), ("reserved", ctypes.c_int32)]


class PlacementOptionsStruct(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint64), ("host_to_device_bytes_per_s", ctypes.c_double),
                ("cold_read_bytes_per_s", ctypes.c_double), ("cpu_attention_bytes_per_s", ctypes.c_double),
                ("gpu_seconds", ctypes.c_double), ("skip_below_mass", ctypes.c_float), ("reserved", ctypes.c_int32)]


class PrefetchStatsStruct(ctypes.Structure):
    _fields_ = ([("struct_size", ctypes.c_uint64)]
                + [(name, ctypes.c_uint64) for name in
                   ("predictions", "settled", "abandoned", "fetched_blocks", "staged_blocks", "withdrawn_blocks",
                    "wasted_blocks", "top_k_blocks", "top_k_resident_in_time")]
                + [(name, ctypes.c_double) for name in ("wasted_bytes", "precision", "recall", "timeliness")])


class StatsStruct(ctypes.Structure):
    _fields_ = ([("struct_size", ctypes.c_uint64), ("hot", TierStatsStruct), ("warm", TierStatsStruct),
                 ("cold", TierStatsStruct)]
                + [(name, ctypes.c_uint64) for name in
                   ("stored_blocks", "shared_stores", "bytes_host_to_device", "bytes_device_to_host",
                    "bytes_nvme_read", "bytes_nvme_written", "corrupt_blocks", "dropped_blocks", "live_sequences")]
                + [("cold_is_buffered", ctypes.c_int32), ("accelerator_is_emulated", ctypes.c_int32)]
                + [("summarized_blocks", ctypes.c_uint64), ("summaries_restored", ctypes.c_uint64)])


def _candidates():
    """Where the library is looked for, in order."""
    explicit = os.environ.get("TIERKV_LIBRARY")
    if explicit:
        return [explicit]
    here = Path(__file__).resolve().parent
    found = [str(here / f"libtierkv.so.{ABI_VERSION}"), str(here.parent.parent / "dist" / "lib" / f"libtierkv.so.{ABI_VERSION}")]
    system = ctypes.util.find_library("tierkv")
    if system:
        found.append(system)
    return found


def load():
    """Loads libtierkv and declares every function's signature."""
    tried = []
    library = None
    for candidate in _candidates():
        if os.path.sep in candidate and not os.path.exists(candidate):
            tried.append(f"{candidate} (absent)")
            continue
        try:
            library = ctypes.CDLL(candidate)
            break
        except OSError as error:
            tried.append(f"{candidate} ({error})")
    if library is None:
        raise ImportError(
            "cannot load libtierkv: build it with tools/build-library (it copies the library into python/tierkv), "
            "or set TIERKV_LIBRARY to its path. Tried: " + "; ".join(tried))

    P = ctypes.POINTER
    handle = ctypes.c_void_p
    status = ctypes.c_int32
    key_p = P(BlockKeyStruct)
    float_p = P(ctypes.c_float)
    signatures = {
        "tierkv_version": (ctypes.c_char_p, []),
        "tierkv_abi_version": (ctypes.c_int32, []),
        "tierkv_last_error": (ctypes.c_char_p, []),
        "tierkv_status_name": (ctypes.c_char_p, [status]),
        "tierkv_open": (status, [ctypes.c_char_p, P(handle)]),
        "tierkv_close": (status, [handle, ctypes.c_int32]),
        "tierkv_get_layout": (status, [handle, P(LayoutStruct)]),
        "tierkv_get_stats": (status, [handle, P(StatsStruct)]),
        "tierkv_block_keys": (status, [handle, P(ctypes.c_uint32), ctypes.c_size_t, ctypes.c_uint32, key_p,
                                       ctypes.c_size_t, P(ctypes.c_size_t)]),
        "tierkv_lookup_prefix": (status, [handle, P(ctypes.c_uint32), ctypes.c_size_t, P(PrefixStruct)]),
        "tierkv_store": (status, [handle, key_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint64,
                                  P(ctypes.c_int32)]),
        "tierkv_store_from_device": (status, [handle, key_p, ctypes.c_int64, ctypes.c_uint64, ctypes.c_size_t,
                                              ctypes.c_uint64, P(ctypes.c_int32)]),
        "tierkv_store_many_from_device": (status, [handle, key_p, P(ctypes.c_int64), P(ctypes.c_uint64), ctypes.c_size_t,
                                                   ctypes.c_uint64, P(ctypes.c_int32), P(ctypes.c_size_t)]),
        "tierkv_read": (status, [handle, key_p, ctypes.c_void_p, ctypes.c_size_t]),
        "tierkv_fastest_tier": (status, [handle, key_p, P(ctypes.c_int32)]),
        "tierkv_make_resident": (status, [handle, key_p, ctypes.c_size_t, ctypes.c_int32, ctypes.c_int32, P(handle)]),
        "tierkv_request_wait": (status, [handle, ctypes.c_double]),
        "tierkv_request_poll": (status, [handle, P(ctypes.c_int32)]),
        "tierkv_request_block": (status, [handle, ctypes.c_size_t, P(BlockLocationStruct)]),
        "tierkv_request_blocks": (status, [handle, ctypes.c_size_t, ctypes.c_size_t, P(BlockLocationStruct)]),
        "tierkv_request_release": (status, [handle]),
        "tierkv_request_cancel": (status, [handle, P(ctypes.c_size_t)]),
        "tierkv_report_attention": (status, [handle, key_p, float_p, ctypes.c_size_t]),
        "tierkv_place_after_prefill": (status, [handle, key_p, float_p, ctypes.c_size_t, P(ctypes.c_size_t),
                                                ctypes.c_size_t, ctypes.c_double, ctypes.c_size_t, P(handle), key_p,
                                                P(ctypes.c_size_t), P(ctypes.c_size_t), P(ctypes.c_size_t)]),
        "tierkv_drop_sequence": (status, [handle, ctypes.c_uint64]),
        "tierkv_flush": (status, [handle, P(ctypes.c_uint64), P(ctypes.c_uint64)]),
        "tierkv_attend_warm": (status, [handle, key_p, ctypes.c_size_t, P(ctypes.c_int32), float_p, ctypes.c_size_t,
                                        ctypes.c_float, float_p, float_p, float_p]),
        "tierkv_predict_mass": (status, [handle, key_p, ctypes.c_size_t, P(ctypes.c_int32), key_p, ctypes.c_size_t,
                                         float_p, ctypes.c_size_t, float_p, ctypes.c_size_t, ctypes.c_float,
                                         ctypes.c_int32, float_p, P(ctypes.c_int32)]),
        "tierkv_rebuild_key_summaries": (status, [handle, ctypes.c_size_t, P(ctypes.c_uint64), P(ctypes.c_uint64),
                                                  P(ctypes.c_uint64)]),
        "tierkv_prefetch": (status, [handle, key_p, ctypes.c_size_t, P(ctypes.c_int32), key_p, ctypes.c_size_t,
                                     float_p, ctypes.c_size_t, float_p, ctypes.c_size_t, P(PrefetchOptionsStruct),
                                     P(handle), P(ctypes.c_uint64), P(ctypes.c_uint64), P(ctypes.c_uint64)]),
        "tierkv_prefetch_mass": (status, [handle, key_p, ctypes.c_size_t, float_p, P(PrefetchOptionsStruct), P(handle),
                                          P(ctypes.c_uint64), P(ctypes.c_uint64), P(ctypes.c_uint64)]),
        "tierkv_prefetch_wait": (status, [handle, ctypes.c_double]),
        "tierkv_plan_layer": (status, [handle, key_p, ctypes.c_size_t, float_p, P(PlacementOptionsStruct),
                                       P(ctypes.c_int32), P(ctypes.c_double)]),
        "tierkv_prefetch_settle": (status, [handle, float_p, P(ctypes.c_int32), ctypes.c_size_t]),
        "tierkv_prefetch_abandon": (status, [handle]),
        "tierkv_get_prefetch_stats": (status, [handle, P(PrefetchStatsStruct)]),
        "tierkv_predictor_create": (status, [handle, P(PredictorOptionsStruct), P(handle)]),
        "tierkv_predictor_predict": (status, [handle, key_p, ctypes.c_size_t, P(ctypes.c_int32), P(ctypes.c_int32),
                                              ctypes.c_int32, key_p, ctypes.c_size_t, float_p, ctypes.c_size_t, float_p,
                                              float_p, ctypes.c_size_t, float_p, P(ctypes.c_int32)]),
        "tierkv_predictor_observe": (status, [handle, key_p, ctypes.c_size_t, float_p]),
        "tierkv_predictor_weights": (status, [handle, ctypes.c_uint32, float_p]),
        "tierkv_predictor_forget": (status, [handle, key_p, ctypes.c_size_t]),
        "tierkv_predictor_release": (status, [handle]),
        "tierkv_merge_partials": (status, [ctypes.c_size_t, ctypes.c_size_t, ctypes.c_size_t, float_p, float_p,
                                           float_p, float_p, float_p, float_p]),
    }
    for name, (restype, argtypes) in signatures.items():
        function = getattr(library, name)
        function.restype = restype
        function.argtypes = argtypes
    if library.tierkv_abi_version() != ABI_VERSION:
        raise ImportError(f"libtierkv has ABI version {library.tierkv_abi_version()}; this binding needs {ABI_VERSION}")
    return library


lib = load()
