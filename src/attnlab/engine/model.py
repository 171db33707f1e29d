"""``HookedModel``: a Hugging Face model with TransformerLens hook points at every attention site.

The wrapper owns the HF model and a tree of :class:`SiteHookPoint` named exactly like
TransformerLens (``blocks.L.attn.hook_pattern``), so ``run_with_hooks``, ``run_with_cache``
and ``hooks()`` behave as TL users expect. Hooks exist only inside ``with`` blocks:
PyTorch hooks are global state, and a forgotten one silently changes every later result.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

import torch
from jaxtyping import Float, Int
from torch import nn
from transformer_lens import ActivationCache, HookedRootModule

from attnlab.engine.adapters import find_attention_modules, is_causal_model, restore_implementation, switch_implementation
from attnlab.engine.attention import AttentionHooks, SiteHookPoint, attach, detach
from attnlab.engine.config import ModelConfig, config_from_hf
from attnlab.engine.locations import SITES, hook_name
from attnlab.errors import AttnlabError, InvalidInput, InvalidLocation, UnsupportedModel, did_you_mean

__all__ = ["HookedModel", "Intervention", "Text"]

Text = str | Sequence[str]
HookFn = Callable[..., Any]


class Intervention(Protocol):
    """Anything ``model.intervene`` accepts: it checks itself, then names its hooks."""

    def validate(self, cfg: ModelConfig) -> None: ...

    def hooks(self, model: HookedModel) -> list[tuple[str, HookFn]]: ...


class _Block(nn.Module):
    def __init__(self, layer: int):
        super().__init__()
        self.attn = AttentionHooks(layer)


class HookedModel(HookedRootModule):
    """A wrapped HF model whose attention can be read and overwritten at every site.

    Build one with :func:`attnlab.load`. Calling it on text or token ids returns logits
    (hidden states for encoders without an LM head).
    """

    def __init__(self, hf_model: nn.Module, tokenizer: Any, *, name: str | None = None, bridge: Any = None):
        super().__init__()
        attention_modules = find_attention_modules(hf_model)
        self.original_attn_implementation = switch_implementation(hf_model)
        try:
            self._build(hf_model, tokenizer, attention_modules, name=name, bridge=bridge)
        except BaseException:
            # a model we cannot wrap is handed back exactly as it came
            restore_implementation(hf_model, self.original_attn_implementation)
            for module in attention_modules:
                detach(module)
            raise

    def _build(self, hf_model, tokenizer, attention_modules, *, name, bridge) -> None:
        self.hf_model = hf_model.eval()
        self.tokenizer = tokenizer
        self.bridge = bridge
        name = name or getattr(hf_model.config, "_name_or_path", "") or type(hf_model).__name__
        has_lm_head = hasattr(hf_model, "get_output_embeddings") and hf_model.get_output_embeddings() is not None
        self.cfg = config_from_hf(
            hf_model.config,
            name=str(name),
            n_layers=len(attention_modules),
            is_causal=is_causal_model(hf_model, attention_modules),
            has_lm_head=has_lm_head,
        )
        self.blocks = nn.ModuleList([_Block(layer) for layer in range(self.cfg.n_layers)])
        for block, module in zip(self.blocks, attention_modules):
            attach(module, block.attn)
        if tokenizer is not None and tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        if tokenizer is not None and getattr(tokenizer, "padding_side", "right") != "right":
            # tokenize() promises right padding (row i's tokens at positions 0..len-1); Gemma's
            # tokenizer pads on the left by default. generate() switches to left itself.
            tokenizer.padding_side = "right"
        self.setup()
        self._check_every_layer_is_reached()

    # -- hook points ----------------------------------------------------------------------

    def setup(self) -> None:
        """Name only attnlab's own hook points (never touch the HF modules' attributes)."""
        self.mod_dict, self.hook_dict = {}, {}
        for name, module in self.blocks.named_modules(prefix="blocks"):
            module.name = name
            self.mod_dict[name] = module
            if isinstance(module, SiteHookPoint):
                self.hook_dict[name] = module

    def hook_point(self, layer: int, site: str) -> SiteHookPoint:
        self.check_layer(layer)
        return self.hook_dict[hook_name(layer, site)]

    def check_layer(self, layer: int) -> int:
        if not isinstance(layer, int) or isinstance(layer, bool) or not 0 <= layer < self.cfg.n_layers:
            raise InvalidLocation(f"layer {layer!r} out of range: {self.cfg.name} has {self.cfg.layer_range()}")
        return layer

    def check_head(self, head: int) -> int:
        if not isinstance(head, int) or isinstance(head, bool) or not 0 <= head < self.cfg.n_heads:
            raise InvalidLocation(f"head {head!r} out of range: {self.cfg.name} has {self.cfg.head_range()}")
        return head

    def _check_hook_names(self, hooks: Sequence[tuple[Any, Any]]) -> None:
        for name, fn in hooks:
            if isinstance(name, str) and name not in self.hook_dict:
                raise InvalidLocation(
                    f"no hook point {name!r} in {self.cfg.name}{did_you_mean(name, self.hook_dict)}; "
                    f"names look like 'blocks.<0..{self.cfg.n_layers - 1}>.attn.hook_<{'|'.join(SITES)}>'"
                )
            if not (isinstance(name, str) or callable(name)) or not callable(fn):
                raise InvalidLocation(f"hooks must be (name or name filter, function) pairs, got ({name!r}, {fn!r})")

    @contextmanager
    def hooks(self, fwd_hooks=(), bwd_hooks=(), reset_hooks_end: bool = True, clear_contexts: bool = False):
        """TransformerLens' ``hooks()``, with hook names checked before anything is attached."""
        self._check_hook_names(list(fwd_hooks))
        self._check_hook_names(list(bwd_hooks))
        with super().hooks(list(fwd_hooks), list(bwd_hooks), reset_hooks_end, clear_contexts) as model:
            yield model

    def run_with_cache(self, *model_args, names_filter=None, **kwargs) -> tuple[torch.Tensor, ActivationCache]:
        """Run and cache only the hooks ``names_filter`` selects (a name, a list or a predicate)."""
        names = [names_filter] if isinstance(names_filter, str) else names_filter
        if isinstance(names, (list, tuple)):
            self._check_hook_names([(n, print) for n in names])
            names = list(names)
        out, cache = super().run_with_cache(*model_args, names_filter=names, **kwargs)
        return out, ActivationCache(cache, self)

    @contextmanager
    def intervene(self, *interventions: Intervention) -> Iterator[HookedModel]:
        """Apply interventions inside a ``with`` block; nestable, and always cleaned up.

        Every spec is validated before any hook is attached or any forward pass runs.
        """
        for spec in interventions:
            if not (hasattr(spec, "validate") and hasattr(spec, "hooks")):
                raise InvalidInput(f"intervene() takes intervention specs, got {type(spec).__name__}: {spec!r}")
            spec.validate(self.cfg)
        fwd: list[tuple[str, HookFn]] = []
        for spec in interventions:
            try:
                fwd.extend(spec.hooks(self))
            except AttnlabError as err:
                raise type(err)(f"while preparing {spec!r} on {self.cfg.name}: {err}") from None
        with self.hooks(fwd_hooks=fwd):
            yield self

    def count_hooks(self) -> int:
        """Hooks attached to attnlab's hook points (0 outside ``with`` blocks).

        transformers keeps a few hooks of its own on some modules (e.g. to collect hidden
        states); those are not attnlab's and are not counted.
        """
        return sum(len(p._forward_hooks) + len(p._forward_pre_hooks) + len(p._backward_hooks) for p in self.hook_dict.values())

    def _check_every_layer_is_reached(self) -> None:
        """One tiny forward pass proving that every layer calls attnlab's attention function."""
        seen: set[int] = set()

        def mark(tensor, hook):
            seen.add(hook.layer_index)

        probe = torch.zeros(1, 2, dtype=torch.long, device=self.device)
        with self.hooks(fwd_hooks=[(lambda name: name.endswith("hook_pattern"), mark)]):
            with torch.no_grad():
                self.hf_model(input_ids=probe)
        missing = sorted(set(range(self.cfg.n_layers)) - seen)
        if missing:
            raise UnsupportedModel(
                f"{self.cfg.name}: layers {missing} do not route attention through transformers' "
                "AttentionInterface, so attnlab cannot read or edit them"
            )

    # -- tokens -----------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.hf_model.get_input_embeddings().weight.device

    def _need_tokenizer(self):
        if self.tokenizer is None:
            raise InvalidInput(f"{self.cfg.name} was loaded without a tokenizer; pass token ids instead of text")
        return self.tokenizer

    def tokenize(self, text: Text) -> dict[str, torch.Tensor]:
        """Token ids and attention mask for one text or a batch (right-padded)."""
        texts = [text] if isinstance(text, str) else list(text)
        if not texts:
            raise InvalidInput("no text given: pass a string or a non-empty list of strings")
        if not all(isinstance(t, str) for t in texts):
            raise InvalidInput("text must be a string or a list of strings")
        tok = self._need_tokenizer()
        enc = tok(texts, return_tensors="pt", padding=True)
        n_ctx = self.cfg.n_ctx
        if n_ctx is not None and enc["input_ids"].shape[1] > n_ctx:
            raise InvalidInput(
                f"input has {enc['input_ids'].shape[1]} tokens but {self.cfg.name} handles at most {n_ctx}"
            )
        return {"input_ids": enc["input_ids"].to(self.device), "attention_mask": enc["attention_mask"].to(self.device)}

    def to_tokens(self, text: Text) -> Int[torch.Tensor, "batch pos"]:
        return self.tokenize(text)["input_ids"]

    def to_str_tokens(self, text: str | torch.Tensor) -> list[str]:
        """The tokens of one text (or one row of ids) as strings, special tokens included."""
        ids = self.to_tokens(text)[0] if isinstance(text, str) else torch.as_tensor(text).reshape(-1)
        tok = self._need_tokenizer()
        return [tok.decode([int(i)]) for i in ids]

    def to_single_token(self, word: str) -> int:
        ids = self._need_tokenizer()(word, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise InvalidInput(f"{word!r} is {len(ids)} tokens for {self.cfg.name}, not one: {ids}")
        return int(ids[0])

    # -- running ----------------------------------------------------------------------------

    def _inputs(self, input: Text | torch.Tensor, attention_mask: torch.Tensor | None) -> dict[str, torch.Tensor]:
        if isinstance(input, torch.Tensor):
            ids = input if input.ndim == 2 else input.reshape(1, -1)
            if ids.dtype not in (torch.long, torch.int, torch.int32, torch.int64):
                raise InvalidInput(f"token ids must be an integer tensor, got {ids.dtype}")
            vocab = self.hf_model.get_input_embeddings().num_embeddings
            if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
                raise InvalidInput(f"token ids must lie in 0..{vocab - 1} for {self.cfg.name}")
            inputs = {"input_ids": ids.to(self.device)}
            if attention_mask is not None:
                if attention_mask.shape != ids.shape:
                    raise InvalidInput(f"attention_mask shape {tuple(attention_mask.shape)} != ids shape {tuple(ids.shape)}")
                inputs["attention_mask"] = attention_mask.to(self.device)
            return inputs
        return self.tokenize(input)

    def forward(
        self,
        input: Text | torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        return_type: str = "logits",
        **hf_kwargs: Any,
    ) -> Float[torch.Tensor, "batch pos d_vocab"] | Any:
        """Logits (or ``return_type="hidden"`` / ``"outputs"``) for text or token ids."""
        if return_type not in ("logits", "hidden", "outputs"):
            raise InvalidInput(f"unknown return_type {return_type!r}; valid: 'logits', 'hidden', 'outputs'")
        inputs = self._inputs(input, attention_mask)
        if return_type == "hidden" and self.cfg.has_lm_head:
            hf_kwargs.setdefault("output_hidden_states", True)
        out = self.hf_model(**inputs, **hf_kwargs)
        if return_type == "outputs":
            return out
        if return_type == "logits" and getattr(out, "logits", None) is not None:
            return out.logits
        return out.last_hidden_state if getattr(out, "last_hidden_state", None) is not None else out.hidden_states[-1]

    @torch.no_grad()
    def generate(
        self,
        prompt: Text,
        *,
        max_new_tokens: int = 20,
        interventions: Sequence[Intervention] = (),
        **gen_kwargs: Any,
    ) -> str | list[str]:
        """Greedy continuation(s) of ``prompt`` with the KV cache, interventions active at every step."""
        if not self.cfg.is_causal or not self.cfg.has_lm_head:
            raise UnsupportedModel(f"{self.cfg.name} is not a causal language model; generate() needs one")
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise InvalidInput(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        tok = self._need_tokenizer()
        texts = [prompt] if isinstance(prompt, str) else list(prompt)
        side = tok.padding_side
        tok.padding_side = "left"  # new tokens must follow every prompt directly
        try:
            enc = self.tokenize(texts)
        finally:
            tok.padding_side = side
        gen_kwargs.setdefault("do_sample", False)
        points = list(self.hook_dict.values())
        with self.intervene(*interventions):
            for point in points:  # an edit at a position still to be generated is not an error
                point.generating = True
            try:
                out = self.hf_model.generate(
                    **enc, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id, **gen_kwargs
                )
            finally:
                for point in points:
                    point.generating = False
        new = out[:, enc["input_ids"].shape[1] :]
        decoded = [tok.decode(row, skip_special_tokens=True) for row in new]
        return decoded[0] if isinstance(prompt, str) else decoded

    def __repr__(self) -> str:
        c = self.cfg
        return (
            f"HookedModel({c.name!r}: {c.architecture}, {c.n_layers} layers x {c.n_heads} heads "
            f"({c.n_kv_heads} kv), d_head={c.d_head}, {'causal' if c.is_causal else 'bidirectional'})"
        )
