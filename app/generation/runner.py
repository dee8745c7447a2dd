"""The model arithmetic of continuous batching, for any transformers causal LM: prefill one
sequence, decode many, always through the model's own forward.

Why not one left-padded batch cache: on CPU (MKL) a matrix product's row results depend on how
many rows are multiplied together (an M=1 product takes a GEMV path, more rows a blocked GEMM
with another summation order), and attention over a padded, longer key axis sums in another
order too. Either makes a batched sequence's logits differ in the last bits from `generate`'s,
which runs every decode step with M=1 over an unpadded cache. So here every sequence keeps the
very `DynamicCache` `generate` would build for it, and:

* prefill is the model's own forward on the prompt alone, with `generate`'s arguments;
* an `exact` decode step makes, for each sequence, the very M=1 products `generate` makes, so
  its logits are bit-identical to decoding it alone: in the batched forward below with its
  dense products computed row by row (lockstep.py), where a probe found that bit-identical for
  the model, else with `generate`'s own [1, 1] forward per sequence (rows shared among threads,
  rows.py);
* any other step runs all sequences through one forward: the dense products are batched, and
  attention is computed per sequence over its own unpadded keys and values (`RowsCache` hands
  each layer's per-sequence views to the `ckpt_rows` attention function, which calls the
  model's own attention function once per row, so softcapping, sliding windows and scaling
  are the model's). Last-bit differences from `generate` are possible there.

A lone sequence always takes the exact path.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from typing import Any

import torch
from transformers import AttentionInterface, DynamicCache
from transformers.cache_utils import Cache, CacheLayerMixin
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from app.generation.errors import ModelUnavailable
from app.generation.lockstep import RowByRowProducts, dense_modules
from app.generation.rows import RowPool
from app.runtime.loading import causal_lm_model_types
from app.runtime.precision import autocast_dtype, autocast_to

ROWS_ATTENTION = "ckpt_rows"
logger = logging.getLogger(__name__)


class SequenceCache:
    """One sequence's cache, the `DynamicCache` `generate` builds, and its length so far."""

    def __init__(self, config: Any) -> None:
        self.dynamic = DynamicCache(config=config)
        self.length = 0


class _RowsLayer(CacheLayerMixin):  # type: ignore[no-untyped-call]
    """One layer of a batched step: each row's key/value goes into its own sequence's cache;
    the views the attention function reads are kept in `views`."""

    def __init__(self, index: int, rows: list[SequenceCache]) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.index = index
        self.rows = rows
        self.views: list[tuple[torch.Tensor, torch.Tensor]] = []

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        pass

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self.views = [
            row.dynamic.update(key_states[i : i + 1], value_states[i : i + 1], self.index)
            for i, row in enumerate(self.rows)
        ]
        return key_states, value_states

    def get_seq_length(self) -> int:
        return max(row.dynamic.get_seq_length(self.index) for row in self.rows)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def get_max_length(self) -> int:
        return -1


class RowsCache(Cache):
    """The sequences of one batched decode step, as one `Cache` for the model's forward."""

    def __init__(self, rows: list[SequenceCache], layers: int, attention: Any) -> None:
        super().__init__(layers=[_RowsLayer(index, rows) for index in range(layers)])
        self.attention = attention  # the model's own attention function, called per row


_active: ContextVar[RowsCache | None] = ContextVar("rows_cache", default=None)


def rows_attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Each row's single query over its own sequence's keys: no padding, so no mask (the
    sliding layers of DynamicCache already keep only the window)."""
    rows = _active.get()
    if rows is None:
        raise RuntimeError(f"{ROWS_ATTENTION} attention is only for the engine's batched steps")
    layer: _RowsLayer = rows.layers[module.layer_idx]
    outputs = [
        rows.attention(module, query[i : i + 1], keys, values, None, **kwargs)[0]
        for i, (keys, values) in enumerate(layer.views)
    ]
    return torch.cat(outputs), None


AttentionInterface.register(ROWS_ATTENTION, rows_attention)


class ModelRunner:
    """Forward passes of one causal LM for the scheduler thread."""

    @staticmethod
    def check_supported(model: Any) -> None:
        config = model.config
        model_type = getattr(config, "model_type", None)
        if model_type not in causal_lm_model_types() or config.is_encoder_decoder:
            raise ModelUnavailable(
                f"text generation supports causal language models, not {model_type!r}"
            )
        if getattr(config, "add_cross_attention", False):
            raise ModelUnavailable(f"{model_type} with cross-attention is not a text generator")

    def __init__(self, model: Any, *, rows: RowPool) -> None:
        self.check_supported(model)
        self.model = model
        self.config = model.config.get_text_config(decoder=True)
        self.rows = rows
        self.device: torch.device = model.device
        self.autocast = autocast_dtype(model)
        self.layers = int(self.config.num_hidden_layers)
        self.implementation = self.config._attn_implementation or "eager"
        self.own_attention = self._own_attention()
        dense = dense_modules(model)
        self.row_by_row = None if dense is None else RowByRowProducts(dense, rows)
        self._lockstep: bool | None = None  # probed on the first exact step of several rows

    def precision(self) -> AbstractContextManager[Any]:
        """Autocast for a mixed-dtype model (what `generate` needs to run on it too)."""
        return autocast_to(self.autocast, self.device)

    def new_cache(self) -> SequenceCache:
        return SequenceCache(self.config)

    @torch.inference_mode()
    def prefill(
        self, prompt: list[int], cache: SequenceCache, *, all_logits: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The prompt through the model's own forward, as `generate`'s first step. Returns the
        last position's float32 logits [1, vocab] and, when asked, every position's [seq, vocab]
        (from a second forward: `generate`'s keeps only the last position's logits, and the
        full LM head, M=seq rows, would give the last row other bits)."""
        ids = torch.tensor([prompt], dtype=torch.long, device=self.device)
        last = self._forward(ids, cache.dynamic, self._positions([0], len(prompt)))
        cache.length = len(prompt)
        every = None
        if all_logits:
            with self.precision():
                every = self.model(input_ids=ids, use_cache=False).logits[0].float()
        return last, every

    @torch.inference_mode()
    def decode(
        self, caches: list[SequenceCache], tokens: list[int], *, exact: bool
    ) -> torch.Tensor:
        """One step for every sequence: feed its last token, return float32 logits [n, vocab].
        `exact`: bit-identical to decoding each row alone, in one forward with row-by-row
        products where the probe allowed it (lockstep.py), else one forward per row."""
        if len(caches) == 1 or (exact and not self.lockstep_is_exact()):
            return self.rows.shared(
                len(caches), lambda start, end: self._alone(caches[start:end], tokens[start:end])
            )
        if exact:
            assert self.row_by_row is not None
            with self.row_by_row.active():
                return self._together(caches, tokens)
        return self._together(caches, tokens)

    def lockstep_is_exact(self) -> bool:
        if self._lockstep is None:
            try:
                self._lockstep = self.row_by_row is not None and self._probe_lockstep()
            except Exception:  # e.g. a context too short for the probe: the plain exact path
                logger.warning("lockstep probe failed", exc_info=True)
                self._lockstep = False
        return self._lockstep

    def _probe_lockstep(self) -> bool:
        """Three random sequences, two steps each way: lockstep only if every bit matched. One
        reaches past the sliding window, where `generate`'s SDPA gets a mask (and other bits)."""
        generator = torch.Generator().manual_seed(0)
        vocab = int(self.config.vocab_size)
        longest = (getattr(self.config, "sliding_window", None) or 6) + 2
        prompts = [
            torch.randint(vocab, (n,), generator=generator).tolist() for n in (3, 5, longest)
        ]
        outcomes = []
        for lockstep in (False, True):
            self._lockstep = lockstep
            caches = [self.new_cache() for _ in prompts]
            for prompt, cache in zip(prompts, caches, strict=True):
                self.prefill(prompt, cache, all_logits=False)
            tokens = [prompt[0] for prompt in prompts]
            outcomes.append(torch.cat([self.decode(caches, tokens, exact=True) for _ in "ab"]))
        return torch.equal(*outcomes)

    def _alone(self, caches: list[SequenceCache], tokens: list[int]) -> torch.Tensor:
        logits = []
        for cache, token in zip(caches, tokens, strict=True):
            ids = torch.tensor([[token]], dtype=torch.long, device=self.device)
            logits.append(self._forward(ids, cache.dynamic, self._positions([cache.length], 1)))
            cache.length += 1
        return torch.cat(logits)

    def _together(self, caches: list[SequenceCache], tokens: list[int]) -> torch.Tensor:
        ids = torch.tensor(tokens, dtype=torch.long, device=self.device).view(-1, 1)
        positions = self._positions([cache.length for cache in caches], 1)
        batch = RowsCache(caches, self.layers, self.own_attention)
        with self._attention(ROWS_ATTENTION), _rows_active(batch):
            logits = self._forward(ids, batch, positions)
        for cache in caches:
            cache.length += 1
        return logits

    def _forward(self, ids: torch.Tensor, cache: Cache, positions: torch.Tensor) -> torch.Tensor:
        """`generate`'s call: its arguments, its float32 copy of the last position's logits."""
        with self.precision():
            out = self.model(
                input_ids=ids,
                cache=cache,
                position_ids=positions,
                logits_to_keep=1,
                use_cache=True,
                return_dict=True,
            )
        logits: torch.Tensor = out.logits[:, -1, :].to(copy=True, dtype=torch.float32)
        return logits

    def _positions(self, starts: list[int], length: int) -> torch.Tensor:
        start = torch.tensor(starts, dtype=torch.long, device=self.device).view(-1, 1)
        return start + torch.arange(length, device=self.device)

    def _own_attention(self) -> Any:
        """The attention function the model's layers call; for "eager" that is each modeling
        file's own `eager_attention_forward` (gemma2's applies its softcapping)."""
        eager = getattr(inspect.getmodule(type(self.model)), "eager_attention_forward", None)
        if eager is None:
            if self.implementation == "eager":
                raise ModelUnavailable(
                    f"{self.config.model_type} has no eager attention function to batch with"
                )
            eager = sdpa_attention_forward  # never used: the implementation is registered
        return ALL_ATTENTION_FUNCTIONS.get_interface(self.implementation, eager)

    @contextmanager
    def _attention(self, implementation: str) -> Iterator[None]:
        # Only the scheduler thread runs this model while a batched step is in flight.
        self.config._attn_implementation = implementation
        try:
            yield
        finally:
            self.config._attn_implementation = self.implementation


@contextmanager
def _rows_active(batch: RowsCache) -> Iterator[None]:
    token = _active.set(batch)
    try:
        yield
    finally:
        _active.reset(token)
