"""Token ids to text, one token at a time, the way TGI streams it."""

from __future__ import annotations

from typing import Any

# TGI starts decoding with up to five prompt tokens as context (prefix_offset = input_len - 5):
# the context defeats clean-up rules that depend on neighbouring tokens (e.g. leading spaces).
PROMPT_CONTEXT_TOKENS = 5
_REPLACEMENT = "\ufffd"


class IncrementalDecoder:
    """TGI's `decode_token` offsets: the text of a new token is decode(prefix..new) minus
    decode(prefix..read). While the decode ends in U+FFFD (an unfinished multi-byte UTF-8
    character split across byte-level tokens) nothing is emitted and the offsets stay put, so
    the character comes out whole with the token that completes it."""

    def __init__(self, tokenizer: Any, prompt_ids: list[int]) -> None:
        self.tokenizer = tokenizer
        self.ids = list(prompt_ids[-PROMPT_CONTEXT_TOKENS:])
        self.prefix_offset = 0
        self.read_offset = len(self.ids)

    def push(self, token_id: int, *, final: bool = False) -> str:
        """The text this token adds. `final` flushes a pending partial character (TGI never
        does, which loses it); with it the concatenated texts equal the full decode."""
        self.ids.append(token_id)
        prefix_text = self._decode(self.ids[self.prefix_offset : self.read_offset])
        new_text = self._decode(self.ids[self.prefix_offset :])
        if len(new_text) > len(prefix_text) and (final or not new_text.endswith(_REPLACEMENT)):
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.ids)
            return new_text[len(prefix_text) :]
        return ""

    def _decode(self, ids: list[int]) -> str:
        text: str = self.tokenizer.decode(ids, skip_special_tokens=False)
        return text


class StopMatcher:
    """Finds stop sequences in the streamed text, including ones spanning several tokens.

    TGI anchors its stop regex at the end of the text (`{stop}$`), so it misses a stop sequence
    followed by more characters of the same token; this matches it anywhere in the new text.
    """

    def __init__(self, stop: tuple[str, ...]) -> None:
        self.stop = stop
        self.text = ""
        self._longest = max((len(s) for s in stop), default=0)

    def push(self, new_text: str) -> bool:
        if not self.stop or not new_text:
            return False
        start = max(0, len(self.text) - self._longest + 1)
        self.text += new_text
        window = self.text[start:]
        # Only the tail can hold a match that was not there before; keep the text short.
        self.text = self.text[-self._longest :]
        return any(sequence in window for sequence in self.stop)
