"""The model arithmetic of continuous batching for GPT-2: prefill one sequence, decode many.

Why not one left-padded batch cache through the model's own forward: on CPU (MKL) a matrix
product's row results depend on how many rows are multiplied together (an M=1 product takes a
GEMV path, more rows a blocked GEMM with another summation order; measured on a 2-core AMD EPYC
with MKL 2024.2: Conv1D's addmm rows differ from M=4 rows on, nn.Linear's from M=2), and
attention over a padded, longer key axis sums in another order too. Either makes a batched
sequence's logits differ in the last bits from `generate`'s, which runs every decode step with
M=1 and an unpadded cache. So here:

* prefill is the model's own forward on the prompt alone, exactly as `generate` calls it;
* decode runs all sequences through each layer together, but attention is computed per
  sequence on its own unpadded key/value rows (a buffer per sequence, written in place and
  grown by doubling; no padding, no masks, no cache rebuild when the batch changes);
* the dense products (QKV, projections, MLP, LM head) are either batched (fast, last-bit
  differences possible) or, when the step is `exact`, computed one row at a time so each
  sequence's logits are bit-identical to `generate` whatever it is batched with. The per-row
  products still share the weights while they are in cache, and the rows are shared among
  threads (products.py), which is all the batching possible without changing the arithmetic.
  A lone sequence always takes this exact path.

Element-wise ops and LayerNorm are row-independent and are always batched.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.gpt2.modeling_gpt2 import eager_attention_forward

from app.generation.errors import ModelUnavailable
from app.generation.products import ExactProducts


class SequenceCache:
    """One sequence's keys and values, [1, heads, capacity, head_dim] per layer, written in
    place. The buffer grows by doubling up to `limit` (prompt + max new tokens), so a request
    allowed the whole context but stopping early never holds a full-context cache."""

    def __init__(self, layers: int, heads: int, head_dim: int, limit: int, like: Any) -> None:
        self.shape = (2 * layers, 1, heads, 0, head_dim)  # entry 2*layer: keys, 2*layer+1: values
        self.limit = limit
        self.buffer = torch.empty(self.shape, dtype=like.dtype, device=like.device)
        self.length = 0

    def reserve(self, length: int) -> None:
        capacity = self.buffer.shape[3]
        if length <= capacity:
            return
        capacity = min(self.limit, max(length, 2 * capacity, 64))
        grown = self.buffer.new_empty((*self.shape[:3], capacity, self.shape[4]))
        grown[:, :, :, : self.length] = self.buffer[:, :, :, : self.length]
        self.buffer = grown

    def fill(self, cache: Any) -> None:
        """Copy a prefill's DynamicCache in."""
        length = cache.layers[0].keys.shape[-2]
        self.reserve(length + 1)
        for index, layer in enumerate(cache.layers):
            self.buffer[2 * index, :, :, :length] = layer.keys
            self.buffer[2 * index + 1, :, :, :length] = layer.values
        self.length = length

    def append(
        self, layer: int, key: torch.Tensor, value: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this step's key/value at `length`; the views up to and including it.
        (SDPA reads the strided views exactly as it reads `generate`'s concatenated cache.)"""
        end = self.length + 1
        keys = self.buffer[2 * layer, :, :, :end]
        values = self.buffer[2 * layer + 1, :, :, :end]
        keys[:, :, self.length] = key[:, :, 0]
        values[:, :, self.length] = value[:, :, 0]
        return keys, values


class GPT2Runner:
    """Forward passes of one GPT-2 model (GPT2LMHeadModel) for the scheduler thread."""

    @staticmethod
    def check_supported(model: Any) -> None:
        config = model.config
        if getattr(config, "model_type", None) != "gpt2" or not hasattr(model, "lm_head"):
            raise ModelUnavailable(
                f"text generation supports GPT-2 language models, not {config.model_type!r}"
            )
        if getattr(config, "add_cross_attention", False):
            raise ModelUnavailable("GPT-2 with cross-attention is not a text generator")

    def __init__(self, model: Any, *, products: ExactProducts) -> None:
        self.check_supported(model)
        config = model.config
        self.model = model
        self.config = config
        self.products = products
        transformer = model.transformer
        self.wte, self.wpe, self.ln_f = transformer.wte, transformer.wpe, transformer.ln_f
        self.blocks = list(transformer.h)
        self.lm_head = model.lm_head
        self.heads = int(config.n_head)
        self.head_dim = int(config.n_embd) // self.heads
        self.embed_dim = int(config.n_embd)
        self.device: torch.device = model.lm_head.weight.device
        implementation = config._attn_implementation or "sdpa"
        self.eager_reordered = implementation == "eager" and bool(config.reorder_and_upcast_attn)
        self.attention = ALL_ATTENTION_FUNCTIONS.get_interface(
            implementation, eager_attention_forward
        )

    def new_cache(self, limit: int) -> SequenceCache:
        return SequenceCache(
            len(self.blocks), self.heads, self.head_dim, limit, self.lm_head.weight
        )

    @torch.inference_mode()
    def prefill(
        self, prompt: list[int], cache: SequenceCache, *, all_logits: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The prompt through the model's own forward, as `generate`'s first step (position
        ids, no attention mask, LM head on the last position only). Returns the last position's
        float32 logits [1, vocab] and, when asked, every position's [seq, vocab]."""
        ids = torch.tensor([prompt], dtype=torch.long, device=self.device)
        dynamic = DynamicCache(config=self.config)
        hidden = self.model.transformer(
            input_ids=ids,
            cache=dynamic,
            position_ids=torch.arange(len(prompt), device=self.device).unsqueeze(0),
            use_cache=True,
        ).last_hidden_state
        # GPT2LMHeadModel with logits_to_keep=1 slices like this before its LM head; the full
        # LM head (M=seq rows) would give the last row other bits.
        last = self.lm_head(hidden[:, -1:, :])[:, -1].to(copy=True, dtype=torch.float32)
        cache.fill(dynamic)
        every = self.lm_head(hidden)[0].float() if all_logits else None
        return last, every

    @torch.inference_mode()
    def decode(
        self, caches: list[SequenceCache], tokens: list[int], *, exact: bool
    ) -> torch.Tensor:
        """One step for every sequence: feed its last token, return float32 logits [n, vocab].
        `exact`: each row's products computed alone (bit-identical to decoding it alone)."""
        rows = len(caches)
        ids = torch.tensor(tokens, dtype=torch.long, device=self.device).view(rows, 1)
        for cache in caches:
            cache.reserve(cache.length + 1)
        positions = torch.tensor(
            [cache.length for cache in caches], dtype=torch.long, device=self.device
        ).view(rows, 1)
        hidden = self.wte(ids) + self.wpe(positions)
        for layer, block in enumerate(self.blocks):
            hidden = self._block(layer, block, hidden, caches, exact)
        for cache in caches:
            cache.length += 1
        return self._logits(self.ln_f(hidden), exact)

    def _logits(self, hidden: torch.Tensor, exact: bool) -> torch.Tensor:
        """LM head over [rows, 1, embed] → float32 [rows, vocab]."""
        rows = hidden.shape[0]
        if exact or rows == 1 or self.lm_head.bias is not None:
            logits: torch.Tensor = self._dense(self.lm_head, hidden, exact)[:, -1]
            return logits.to(copy=True, dtype=torch.float32)
        # Batched: MKL multiplies W·Xᵀ (vocab rows × batch columns) about 1.4× faster than the
        # X·Wᵀ of nn.Linear on this kind of CPU, and the LM head is a third of a step.
        transposed = torch.mm(self.lm_head.weight, hidden.view(rows, -1).t())
        return transposed.t().contiguous().to(torch.float32)

    def _block(
        self,
        layer: int,
        block: Any,
        hidden: torch.Tensor,
        caches: list[SequenceCache],
        exact: bool,
    ) -> torch.Tensor:
        """GPT2Block.forward with per-sequence attention (same operations, same order)."""
        attn = block.attn
        qkv = self._dense(attn.c_attn, block.ln_1(hidden), exact)
        query, key, value = torch.split(qkv, self.embed_dim, dim=2)
        shape = (hidden.shape[0], 1, self.heads, self.head_dim)
        query = query.view(shape).transpose(1, 2)
        key = key.view(shape).transpose(1, 2)
        value = value.view(shape).transpose(1, 2)
        outputs = []
        for row, cache in enumerate(caches):
            keys, values = cache.append(layer, key[row : row + 1], value[row : row + 1])
            outputs.append(self._attend(attn, query[row : row + 1], keys, values))
        # (Sharing these rows among threads too was measured: no faster, so it stays simple.)
        attended = torch.cat(outputs) if len(outputs) > 1 else outputs[0]
        attended = attended.reshape(*attended.shape[:-2], -1).contiguous()
        hidden = self._dense(attn.c_proj, attended, exact) + hidden
        mlp = block.mlp
        expanded = mlp.act(self._dense(mlp.c_fc, block.ln_2(hidden), exact))
        feed_forward = self._dense(mlp.c_proj, expanded, exact)
        return hidden + feed_forward

    def _attend(
        self, attn: Any, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor
    ) -> torch.Tensor:
        # A single query over an unpadded cache: `generate` passes no mask either (it drops an
        # all-ones mask), so SDPA runs the very same kernel on the very same numbers.
        if self.eager_reordered:
            output, _ = attn._upcast_and_reordered_attn(query, keys, values, None)
        else:
            output, _ = self.attention(
                attn, query, keys, values, None, dropout=0.0, scaling=attn.scaling
            )
        result: torch.Tensor = output
        return result

    def _dense(self, module: Any, hidden: torch.Tensor, exact: bool) -> torch.Tensor:
        """hidden [rows, 1, in] → [rows, 1, out]: row by row when exact or a single row,
        otherwise stacked."""
        if exact or hidden.shape[0] == 1:
            return self.products(module, hidden)
        out: torch.Tensor = module(hidden)
        return out
