"""Incremental decoding, stop matching and parameter validation, without a model."""

from __future__ import annotations

from typing import Any

import pytest

from app.generation import GenerationParams, ValidationFailed
from app.generation.decoding import IncrementalDecoder, StopMatcher
from tests.generation.conftest import TinyFolder

TEXT = "héllo wörld 😀 ok ✓"


def stream_text(tokenizer: Any, prompt: list[int], ids: list[int]) -> list[str]:
    decoder = IncrementalDecoder(tokenizer, prompt)
    return [decoder.push(i, final=n == len(ids) - 1) for n, i in enumerate(ids)]


def test_multibyte_characters_come_out_whole(tiny_folder: TinyFolder) -> None:
    tokenizer = tiny_folder.tokenizer
    ids = tokenizer(TEXT)["input_ids"]
    assert len(ids) > len(TEXT)  # a byte-level vocabulary of 300: characters span tokens
    pieces = stream_text(tokenizer, tokenizer("say:")["input_ids"], ids)
    assert "".join(pieces) == TEXT
    assert not any("\ufffd" in piece for piece in pieces)
    assert "" in pieces  # held back while a character was incomplete
    # ...and no longer: every character comes out with the token that completes it
    for count in range(1, len(ids) + 1):
        complete = tokenizer.decode(ids[:count]).rstrip("\ufffd")
        assert "".join(pieces[:count]) == complete, count


def test_unfinished_character_is_flushed_at_the_end(tiny_folder: TinyFolder) -> None:
    tokenizer = tiny_folder.tokenizer
    ids = tokenizer("ok 😀")["input_ids"][:-1]  # the emoji's last byte never comes
    pieces = stream_text(tokenizer, [], ids)
    assert "".join(pieces) == tokenizer.decode(ids)
    assert pieces[-1].endswith("\ufffd")


def test_stop_matcher_across_pieces() -> None:
    matcher = StopMatcher(("</s>", "stop here"))
    assert [matcher.push(p) for p in ["a", "<", "/", "s", ">"]] == [False] * 4 + [True]
    other = StopMatcher(("stop here",))
    assert not other.push("we stop")
    assert not other.push(" he")
    assert other.push("re and go on")  # found even with text after it in the same token
    assert not StopMatcher(()).push("anything")


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (GenerationParams(temperature=0.0), "`temperature` must be strictly positive"),
        (GenerationParams(top_k=0), "`top_k` must be strictly positive"),
        (GenerationParams(top_p=1.0), "`top_p` must be > 0.0 and < 1.0"),
        (GenerationParams(top_p=0.0), "`top_p` must be > 0.0 and < 1.0"),
        (GenerationParams(typical_p=1.0), "`typical_p` must be > 0.0 and < 1.0"),
        (GenerationParams(repetition_penalty=0.0), "`repetition_penalty` must be strictly"),
        (GenerationParams(max_new_tokens=0), "`max_new_tokens` must be strictly positive"),
        (GenerationParams(stop=["a"] * 5), "`stop` supports up to 4 stop sequences. Given: 5"),
        (GenerationParams(top_n_tokens=6), "`top_n_tokens` must be >= 0 and <= 5. Given: 6"),
        (GenerationParams(seed=-1), "`seed` must be >= 0"),
        (
            GenerationParams(max_new_tokens=60),
            "`inputs` tokens + `max_new_tokens` must be <= 64. Given: 10 `inputs` tokens and "
            "60 `max_new_tokens`",
        ),
    ],
)
def test_validation_messages(params: GenerationParams, message: str) -> None:
    with pytest.raises(ValidationFailed) as raised:
        params.validate(input_length=10, context_length=64)
    assert raised.value.message.startswith(message)
    assert (raised.value.status, raised.value.code) == (422, "validation")


def test_valid_params_and_limits() -> None:
    params = GenerationParams(max_new_tokens=54, top_p=0.5, stop=["x"], top_n_tokens=5)
    params.validate(input_length=10, context_length=64)
    with pytest.raises(ValidationFailed, match="`inputs` must have less than 64 tokens"):
        params.validate(input_length=64, context_length=64)
    with pytest.raises(ValidationFailed, match="`inputs` cannot be empty"):
        params.validate(input_length=0)
    assert GenerationParams().new_token_budget(10, 64) == 54
    assert GenerationParams(max_new_tokens=5).new_token_budget(10, 64) == 5
    assert GenerationParams(stop=["a", "b"]).stop == ("a", "b")
