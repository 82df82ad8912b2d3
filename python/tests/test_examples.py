"""The examples run, and what they claim holds."""

import importlib.util
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_decode_step_merges_gpu_and_cpu_partials_exactly():
    decode_step = load("decode_step")
    worst, stats = decode_step.run(layers=3, blocks=40, seed=3, verbose=False)
    assert worst < 1e-5, f"the merged attention is off by {worst}"  # fp16 K/V, fp32 compute, against float64
    assert stats["settled"] == 3 and stats["predictions"] == 3
    # Prefetches were issued and judged (how many landed in time depends on the machine's timing).
    assert stats["fetched_blocks"] + stats["withdrawn_blocks"] > 0 and stats["top_k_blocks"] == 3 * 6, stats
