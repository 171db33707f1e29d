"""The tokens greedy decoding must give, recomputed by full forward passes (no KV cache) under the same edit."""

from __future__ import annotations

import torch


def assert_generate_matches_full_passes(model, texts: list[str], under, n_new: int = 6) -> None:
    """``generate()`` inside ``under()`` (a context manager factory: hooks or interventions) picks, at every step,
    the argmax of a full forward pass over the prompt and the tokens so far under the same edit, and the edit
    changes what is generated."""
    with under():
        generated = model.generate(texts, max_new_tokens=n_new, return_type="tokens")
    plain = model.generate(texts, max_new_tokens=n_new, return_type="tokens")
    assert not torch.equal(plain, generated)
    for row, text in enumerate(texts):
        ids = model.to_tokens(text)
        for step in range(n_new):
            with torch.no_grad(), under():
                nxt = model(ids)[0, -1].argmax()
            assert int(nxt) == int(generated[row, step]), (row, step)
            ids = torch.cat([ids, nxt.view(1, 1)], dim=1)
    assert model.count_hooks() == 0
