"""The head-analysis example runs end to end on its shipped sample (real MiniLM, so marked slow)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_what_does_bert_look_at_runs(tmp_path):
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "what_does_bert_look_at.py"), "--out", str(tmp_path), "--quiet"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "16 sentences from sample.conllu" in out.stdout
    assert "Attention probe: trained on 10 sentences, tested on 6" in out.stdout
    for name in ("attention_targets.png", "entropy.png", "head_clusters.png", "relations.png"):
        assert (tmp_path / name).stat().st_size > 1000
