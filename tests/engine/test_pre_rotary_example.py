"""examples/pre_rotary_neurons.py on the embedded Gemma-3-270m: its printed claims hold (slow: the real model)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_pre_rotary_example_says_true_things(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "pre_rotary_neurons.py"), "--json", str(tmp_path / "n.json")],
                         capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    numbers = json.loads((tmp_path / "n.json").read_text())
    half = 128  # Gemma-3-270m: d_head 256
    assert numbers["pair"] == [numbers["k_top_dims"][0] % half, numbers["k_top_dims"][0] % half + half]
    assert numbers["pair_gap"] < 1e-5 < 0.05 < numbers["pair_effect"]  # a pair: the same edit before and after
    assert numbers["one_dim_gap"] > 1e-4  # one dimension: not the same edit
    assert all(d % half > half // 2 for d in numbers["k_top_dims"])  # the largest keys: low-frequency pairs
    assert f"Key pair {numbers['pair'][0] % half} (dims {numbers['pair']}) zeroed before vs after" in out.stdout
    # before Gemma's k norm: the norm rescales the rest of the key, so it is another edit than after the norm
    assert numbers["norm_gap"] > 1e-3 and numbers["norm_effect"] > 0.05
    assert f"Key pair {numbers['pair'][0] % half} zeroed before Gemma's k norm vs after it" in out.stdout
