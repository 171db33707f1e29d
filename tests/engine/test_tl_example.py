"""examples/tl_style_analysis.py runs on the real Gemma-3-270m and its numbers hold together (slow)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_tl_style_analysis_example(tmp_path):
    figure, numbers = tmp_path / "tl_style.png", tmp_path / "numbers.json"
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "tl_style_analysis.py"), "-o", str(figure), "--json", str(numbers)],
        capture_output=True, text=True, timeout=900, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},  # this tree's attnlab, whatever is installed
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert figure.stat().st_size > 10_000
    data = json.loads(numbers.read_text())
    clean = data["clean_diff"]
    assert clean > 0 > data["corrupt_diff"]  # " she" after the nurse, " he" after the man
    # the per-layer attributions account for the whole logit difference (Gemma-3 has no biases)
    assert abs(sum(data["layer_attrs"].values()) - clean) <= 1e-3
    assert len(data["head_attrs"]) == 18 and len(data["head_attrs"][0]) == 4
    # the logit lens after all 18 blocks (stop_at_layer=18, then ln_final and unembed) is the model's own answer
    lens = data["logit_lens"]
    assert len(lens) == 19 and abs(lens[-1] - clean) <= 1e-3 and abs(lens[0] - clean) > 0.1
    # the padding trap: [:, -1] of a right-padded batch is wrong, the two fixes are right
    trap = data["padding_trap"]
    assert abs(trap["next_token_logits"] - clean) <= 1e-3
    assert abs(trap["[:, -1] of a left-padded batch"] - clean) <= 1e-3
    assert abs(trap["[:, -1] of a right-padded batch"] - clean) > 0.1
    # patching resid_pre of layer 0: only the position that differs (" nurse") carries the difference
    first = data["patching"][0]
    nurse = data["tokens"].index(" nurse")
    assert abs(first[nurse] - 1.0) <= 1e-3
    assert all(abs(v) <= 1e-3 for i, v in enumerate(first) if i != nurse)
    assert "1. Direct logit attribution: the 37 components sum to" in out.stdout
    # path patching into the top head's inputs: all copies of the layer = what they read (ln1's output)
    inputs = data["head_inputs"]
    assert abs(inputs["all copies of the layer"] - inputs["ln1.hook_normalized"]) <= 1e-3
    assert abs(inputs["ln1.hook_normalized"]) > 1e-3  # the patch does something at that layer
    assert all(isinstance(inputs[s], float) and abs(inputs[s]) < 10 for s in ("q_input", "k_input", "v_input"))
    assert "Path patching into L" in out.stdout
