"""Bad input gives a clear exception carrying the library's message, never a crash."""

import ctypes

import numpy as np
import pytest

import tierkv
from tierkv import _native

LAYOUT = {"layers": 1, "kv_heads": 2, "query_heads": 4, "head_dim": 64, "tokens_per_block": 16, "dtype": "fp32"}


@pytest.fixture
def cache():
    with tierkv.Hierarchy(layout=LAYOUT, hot_blocks=2, warm_blocks=4, accelerator="emulated") as hierarchy:
        yield hierarchy


def test_configuration_errors_name_the_field():
    with pytest.raises(tierkv.InvalidArgument, match='unknown configuration field "hot_blcks"'):
        tierkv.Hierarchy(layout=LAYOUT, hot_blcks=2, warm_blocks=4, accelerator="emulated")
    with pytest.raises(tierkv.InvalidArgument, match='"accelerator" is required'):
        tierkv.Hierarchy(layout=LAYOUT, hot_blocks=2, warm_blocks=4)
    with pytest.raises(tierkv.InvalidArgument, match="hotCapacityBlocks is 0"):
        tierkv.Hierarchy(layout=LAYOUT, hot_blocks=0, warm_blocks=4, accelerator="emulated")
    with pytest.raises(tierkv.InvalidArgument, match="unknown dtype 'fp12'"):
        tierkv.Hierarchy(layout={**LAYOUT, "dtype": "fp12"}, hot_blocks=2, warm_blocks=4, accelerator="emulated")
    with pytest.raises(tierkv.InvalidArgument, match=r'"policy" is "fifo"; expected one of lru, layered, lfu'):
        tierkv.Hierarchy(layout=LAYOUT, hot_blocks=2, warm_blocks=4, accelerator="emulated", policy="fifo")
    tierkv.Hierarchy(layout=LAYOUT, hot_blocks=2, warm_blocks=4, accelerator="emulated", policy="streamingllm:1:8").close()
    tierkv.Hierarchy(layout=LAYOUT, hot_blocks=2, warm_blocks=4, accelerator="emulated", policy="layered").close()
    with pytest.raises(tierkv.InvalidArgument, match=r'"warm_policy" is "mru"; expected one of lru, layered'):
        tierkv.Hierarchy(layout=LAYOUT, hot_blocks=2, warm_blocks=4, accelerator="emulated", policy="layered", warm_policy="mru")
    with pytest.raises(tierkv.InvalidArgument, match=r'"cpu_spin_us" is -1; expected 0–1000000 microseconds'):
        tierkv.Hierarchy(layout=LAYOUT, hot_blocks=2, warm_blocks=4, accelerator="emulated", cpu_spin_us=-1)
    with pytest.raises(tierkv.InvalidArgument, match=r'"prefetch_bytes_in_flight" is 0; expected bytes > 0'):
        tierkv.Hierarchy(layout=LAYOUT, hot_blocks=2, warm_blocks=4, accelerator="emulated", prefetch_bytes_in_flight=0)
    tierkv.Hierarchy(layout=LAYOUT, hot_blocks=2, warm_blocks=4, accelerator="emulated", prefetch_bytes_in_flight=1 << 20).close()
    with pytest.raises(tierkv.InvalidArgument, match="NUMA node 99 does not exist"):
        tierkv.Hierarchy(layout=LAYOUT, hot_blocks=2, warm_blocks=4, accelerator="emulated", numa_node=99)
    with pytest.raises(tierkv.InvalidArgument, match="cache_dir|cacheDirectory"):
        tierkv.Hierarchy(layout=LAYOUT, hot_blocks=2, warm_blocks=4, cold_blocks=8, accelerator="emulated")


def test_wrong_dtype_shape_and_layout(cache):
    key = cache.block_keys(np.arange(16), layer=0)[0]
    with pytest.raises(tierkv.InvalidArgument, match="dtype float16; the layout stores fp32"):
        cache.store(key, np.zeros(cache.layout.block_shape, dtype=np.float16), position=0)
    with pytest.raises(tierkv.InvalidArgument, match="a block is"):
        cache.store(key, np.zeros((2, 8, 2, 64), dtype=np.float32), position=0)
    with pytest.raises(tierkv.InvalidArgument, match="numpy array"):
        cache.store(key, b"\0" * cache.layout.block_bytes, position=0)
    with pytest.raises(tierkv.InvalidArgument, match="C-contiguous"):
        cache.store(key, np.zeros((2, 16, 2, 128), dtype=np.float32)[..., ::2], position=0)
    with pytest.raises(tierkv.InvalidArgument, match="position -1"):
        cache.store(key, np.zeros(cache.layout.block_shape, dtype=np.float32), position=-1)
    with pytest.raises(tierkv.InvalidArgument, match="layer 5 is out of range"):
        cache.block_keys(np.arange(16), layer=5)
    with pytest.raises(tierkv.InvalidArgument, match="tokens must be one-dimensional"):
        cache.block_keys(np.zeros((2, 16), dtype=np.int64), layer=0)
    with pytest.raises(tierkv.InvalidArgument, match="query has shape"):
        cache.attend_warm([key], np.zeros((3, 64)))
    with pytest.raises(tierkv.NotFound, match="not cached"):
        cache.read(tierkv.BlockKey(1, 2, 0))
    with pytest.raises(tierkv.NotFound, match="not cached"):
        cache.attend_warm([tierkv.BlockKey(1, 2, 0)], np.zeros((4, 64)))
    with pytest.raises(tierkv.InvalidArgument, match="prefix_low must be an integer"):
        cache.read(tierkv.BlockKey(1, -2, 0))
    with pytest.raises(tierkv.InvalidArgument, match="tier must be 'hot' or 'warm'"):
        cache.make_resident([key], tier="cold")
    with pytest.raises(tierkv.InvalidArgument, match="same key more than once"):
        cache.make_resident([key, key])
    with pytest.raises(tierkv.InvalidArgument, match="mass has shape"):
        cache.report_attention([key], [1.0, 2.0])
    with pytest.raises(tierkv.InvalidArgument, match="must be finite"):
        cache.report_attention([key], [float("nan")])


def test_closed_and_released_handles(cache):
    key = cache.block_keys(np.arange(16), layer=0)[0]
    cache.store(key, np.ones(cache.layout.block_shape, dtype=np.float32), position=0)
    request = cache.make_resident([key], tier="warm").wait()
    view = request.host_array(0)
    assert view.sum() == view.size
    request.release()
    request.release()  # idempotent
    with pytest.raises(tierkv.InvalidHandle, match="released"):
        request.wait()
    with pytest.raises(tierkv.InvalidArgument, match="out of range"):
        cache.make_resident([key], tier="warm").state(3)
    cache.close()
    cache.close()  # idempotent
    with pytest.raises(tierkv.ClosedError, match="closed"):
        cache.read(key)
    with pytest.raises(tierkv.InvalidHandle, match="not an open request handle"):
        # The request opened before close was released by close.
        tierkv._check(_native.lib.tierkv_request_release(ctypes.c_void_p(0x1234)))


def test_raw_abi_rejects_null_and_foreign_handles():
    lib = _native.lib
    assert lib.tierkv_close(None, 0) == _native.ERROR_INVALID_HANDLE
    assert b"NULL" in lib.tierkv_last_error()
    assert lib.tierkv_close(ctypes.c_void_p(0xdeadbeef), 0) == _native.ERROR_INVALID_HANDLE
    assert b"0xdeadbeef is not an open hierarchy handle" in lib.tierkv_last_error()
    assert lib.tierkv_open(None, None) == _native.ERROR_INVALID_ARGUMENT
    assert lib.tierkv_open(b"[1, 2", ctypes.byref(ctypes.c_void_p())) == _native.ERROR_INVALID_ARGUMENT
    assert b"JSON at byte" in lib.tierkv_last_error()
    assert lib.tierkv_status_name(999) == b"unknown status"
    assert lib.tierkv_status_name(_native.ERROR_CORRUPTION) == b"corruption"
