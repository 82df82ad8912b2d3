"""tools/record-tierkv-trace on a tiny randomly initialised Llama: the trace holds what the
simulator's predictors read (every query head, the blocks' keys, the tail keys), and the keys it
writes agree with the summaries it writes and with the model's own attention."""

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed: the trace recorder needs it")
transformers = pytest.importorskip("transformers", reason="transformers is not installed")
np = pytest.importorskip("numpy")

RECORDER = Path(__file__).resolve().parents[2] / "tools" / "record-tierkv-trace"


def fp16_rows(text, kv_heads, head_dim):
    """[tokens, kv_heads, head_dim] float32 from base64 little-endian fp16."""
    return np.frombuffer(base64.b64decode(text), dtype="<f2").astype(np.float32).reshape(-1, kv_heads, head_dim)


def test_recorded_trace_carries_query_heads_keys_and_tail_keys(tmp_path):
    config = transformers.LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                                      max_position_embeddings=256)
    config.save_pretrained(tmp_path / "model")
    out = tmp_path / "t.jsonl"
    subprocess.run([sys.executable, str(RECORDER), "--model", str(tmp_path / "model"), "--random-init", "--device", "cpu",
                    "--dtype", "float32", "--context-tokens", "40", "--decode-steps", "10", "--out", str(out)],
                   check=True, capture_output=True)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    header = lines[0]
    assert header["query_heads"] == 4 and header["kv_heads"] == 2 and header["head_dim"] == 32
    blocks = [line for line in lines if line.get("type") == "block"]
    steps = [line for line in lines if line.get("type") == "step"]
    assert len(steps) == 10 * 2
    # Blocks 0 and 1 complete at prefill, block 2 at position 47 (step 7), per layer.
    assert sorted({(b["layer"], b["block"]) for b in blocks}) == [(layer, block) for layer in (0, 1) for block in (0, 1, 2)]
    for block in blocks:
        keys = fp16_rows(block["keys_fp16"], 2, 32)
        assert keys.shape == (16, 2, 32)
        # The summaries are of the same keys (fp16 rounding apart).
        assert np.allclose(keys.min(axis=0), np.array(block["key_min"]), atol=2e-3)
        assert np.allclose(keys.max(axis=0), np.array(block["key_max"]), atol=2e-3)
    for step in steps:
        position = step["position"]
        assert len(step["query"]) == 4 and all(len(row) == 32 for row in step["query"])
        tail = fp16_rows(step["tail_keys_fp16"], 2, 32)
        assert tail.shape[0] == position % 16 + 1
        # The recorded keys and per-head queries reproduce the model's attention: softmax of
        # q·k/√d over every token (complete blocks' keys, then the tail), averaged over heads,
        # summed per block, is the recorded mass.
        layer_blocks = {b["block"]: fp16_rows(b["keys_fp16"], 2, 32) for b in blocks if b["layer"] == step["layer"]}
        full = position // 16
        keys = np.concatenate([layer_blocks[index] for index in range(full)] + [tail])  # [tokens, kv, dim]
        query = np.array(step["query"], dtype=np.float32).reshape(2, 2, 32)  # [kv, group, dim]
        logits = np.einsum("hgd,thd->hgt", query, keys) / np.sqrt(32)
        weights = np.exp(logits - logits.max(axis=-1, keepdims=True))
        weights /= weights.sum(axis=-1, keepdims=True)
        per_token = weights.reshape(4, -1).mean(axis=0)
        per_block = np.add.reduceat(per_token, np.arange(0, len(per_token), 16))
        assert np.allclose(per_block, np.array(step["mass"]), atol=5e-3), (position, per_block, step["mass"])


def test_speculation_from_the_attention_residual(tmp_path):
    """With layer 0's MLP zeroed, layer 1's input is layer 0's residual after attention, so the
    query speculated from it (--speculate-from attention) is layer 1's own query; the one from
    layer 0's input (the default, InfiniGen's) is not."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=1, head_dim=32,
                                      max_position_embeddings=256)
    model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.zero_()
    model.save_pretrained(tmp_path / "model")
    gaps = {}
    for source in ("input", "attention"):
        out = tmp_path / f"{source}.jsonl"
        subprocess.run([sys.executable, str(RECORDER), "--model", str(tmp_path / "model"), "--device", "cpu",
                        "--dtype", "float32", "--context-tokens", "20", "--decode-steps", "3",
                        "--speculate-from", source, "--out", str(out)], check=True, capture_output=True)
        steps = [json.loads(line) for line in out.read_text().splitlines()[1:]]
        layer1 = [step for step in steps if step.get("type") == "step" and step["layer"] == 1]
        assert len(layer1) == 3 and all("spec_query" in step for step in layer1)
        gaps[source] = max(float(np.abs(np.array(step["spec_query"]) - np.array(step["query"])).max()) for step in layer1)
    assert gaps["attention"] < 1e-4, gaps
    assert gaps["input"] > 1e-2, gaps


def test_prefill_lines_are_the_windows_attention(tmp_path):
    """The prefill lines hold what the model's own attention (output_attentions, eager) gives the
    prompt's blocks from its last --prefill-window tokens, averaged over them and the heads; the
    simulator reads them for --prefill-placement."""
    torch.manual_seed(1)
    config = transformers.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                      max_position_embeddings=256, attn_implementation="eager")
    model = transformers.LlamaForCausalLM(config).eval()
    model.save_pretrained(tmp_path / "model")
    out = tmp_path / "t.jsonl"
    subprocess.run([sys.executable, str(RECORDER), "--model", str(tmp_path / "model"), "--device", "cpu",
                    "--dtype", "float32", "--context-tokens", "72", "--decode-steps", "2", "--prefill-window", "8",
                    "--seed", "3", "--out", str(out)], check=True, capture_output=True)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    prefill = [line for line in lines if line.get("type") == "prefill"]
    assert [line["layer"] for line in prefill] == [0, 1] and all(line["window"] == 8 for line in prefill)

    torch.manual_seed(3)  # the recorder's random prompt
    ids = torch.randint(0, 256, (72,)).unsqueeze(0)
    with torch.no_grad():
        attentions = model(ids, output_attentions=True).attentions
    for line in prefill:
        weights = attentions[line["layer"]][0, :, -8:, :].mean(dim=(0, 1)).numpy()  # [72]
        expected = np.add.reduceat(weights, np.arange(0, 72, 16))  # 5 blocks, the last partial
        assert len(line["mass"]) == 5
        assert np.allclose(line["mass"], expected / expected.sum(), atol=1e-5), (line["mass"], expected)

    simulate = Path(__file__).resolve().parents[2] / ".build" / "debug" / "tierkv"
    if simulate.exists():  # the trace replays with the placement (the Swift suites test it in depth)
        result = subprocess.run([str(simulate), "simulate", "--trace", str(out), "--trace-format", "tierkv",
                                 "--model", str(tmp_path / "model"), "--prefill-placement", "on", "--hot", "50%",
                                 "--json"],
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["prefill_placement"]["chosen_blocks"] > 0
