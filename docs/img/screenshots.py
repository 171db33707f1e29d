"""Rebuild the view screenshots in docs/img (needs the embedded models and Debian's chromium).

Run from the repository root: ``python docs/img/screenshots.py``.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import attnlab
from attnlab.interventions import AblateHead
from attnlab.viz import diff_view, head_view, model_view, neuron_view

OUT = Path(__file__).resolve().parent
TEXT = "The nurse said that she was tired because the shift was long."
PAIR = ("The nurse said that she was tired.", "The shift was long.")


def shoot(view, name: str, size: str) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    with tempfile.TemporaryDirectory() as tmp:
        page = view.save(Path(tmp) / f"{name}.html")
        subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
             f"--user-data-dir={tmp}/profile", "--virtual-time-budget=3000", f"--window-size={size}",
             f"--screenshot={OUT / (name + '.png')}", page.as_uri()],
            check=True, capture_output=True,
        )
    print("wrote", OUT / f"{name}.png")


def main() -> None:
    gemma = attnlab.load("gemma-3-270m")
    minilm = attnlab.load("minilm")
    shoot(head_view(gemma, TEXT, layer=4, heads=[0, 1, 3]), "head_view", "640,470")
    shoot(head_view(minilm, PAIR, layer=2, heads=[0, 5, 9]), "head_view_pair", "640,500")
    shoot(model_view(gemma, TEXT, layers=range(0, 18, 3)), "model_view", "470,600")
    shoot(neuron_view(gemma, TEXT, layers=[4], query=5), "neuron_view", "1000,330")
    shoot(diff_view(gemma, TEXT, [AblateHead(3)], layers=range(3, 9)), "diff_view", "1130,790")


if __name__ == "__main__":
    main()
