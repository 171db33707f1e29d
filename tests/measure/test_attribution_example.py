"""examples/attribution_patching.py runs end to end on Gemma-3-270m (real model: slow)."""

import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_attribution_example_estimates_verifies_and_compares(tmp_path):
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "attribution_patching.py"), "--pairs", "6", "--top", "3", "--exact",
         "--out", str(tmp_path), "--quiet"],
        capture_output=True, text=True, timeout=900, cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    estimates, verified, exact = (pd.read_csv(tmp_path / f"{n}.csv") for n in ("estimates", "verified", "exact"))
    assert len(estimates) == len(exact) == 72 and len(verified) == 3
    # the verified effects are the exact sweep's for the same heads
    by_head = exact.assign(unit=[f"L{l}H{h}" for l, h in zip(exact["layer"], exact["head"])]).set_index("unit")["effect"]
    assert (verified.effect - by_head.loc[verified.variant].to_numpy()).abs().max() < 1e-5
    # the estimate ranks the heads like the exact sweep (printed and recomputable from the tables)
    spearman = float(re.search(r"Spearman (-?[0-9.]+)", out.stdout).group(1))
    assert spearman == pytest.approx(estimates.effect.rank().corr(exact.effect.rank()), abs=1e-3)
    assert spearman > 0.8
    assert (tmp_path / "estimate_vs_exact.png").stat().st_size > 1000
