"""A corpus generated from templates (nothing is downloaded) and a byte-level BPE for it.

The sentences are a training journal about checkpoints: a few fixed shapes with names and
numbers in them, so a model of a few hundred thousand parameters learns the shapes in a few
hundred steps and its samples show them.
"""

from __future__ import annotations

import random
from typing import Any

EOS = "<|endoftext|>"
MODEL_NAMES = ("vega", "orion", "lyra", "atlas", "nova", "juno", "rigel", "altair")
CHECKS = ("integrity", "round trip", "load", "equivalence", "stability", "weights")
TEMPLATES = (
    "model {model}, epoch {epoch}: loss {loss}, val loss {val_loss}.",
    "the registry stored {model} version {version} and verified it.",
    "{model} version {version} is now the best checkpoint.",
    "the {check} check of {model} version {version} passed.",
    "a checkpoint of {model} holds {params} thousand parameters.",
    "every tensor of {model} version {version} matches its hash.",
)


def generate_corpus(sentences: int = 4000, seed: int = 0) -> str:
    """`sentences` templated sentences, eight to a line; the same text for the same seed."""
    rng = random.Random(seed)
    picked = [_sentence(rng) for _ in range(sentences)]
    lines = [" ".join(picked[start : start + 8]) for start in range(0, len(picked), 8)]
    return "\n".join(lines) + "\n"


def _sentence(rng: random.Random) -> str:
    loss = rng.uniform(1.0, 4.0)
    return rng.choice(TEMPLATES).format(
        model=rng.choice(MODEL_NAMES),
        epoch=rng.randint(1, 9),
        loss=f"{loss:.2f}",
        val_loss=f"{loss + rng.uniform(0.0, 0.5):.2f}",
        version=rng.randint(1, 9),
        check=rng.choice(CHECKS),
        params=rng.choice((120, 350, 480, 760)),
    )


def train_tokenizer(text: str, vocab_size: int = 512) -> Any:
    """A byte-level BPE trained on `text`, wrapped as a transformers GPT-2 tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Tokenizer

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(text.splitlines(), trainer)
    return GPT2Tokenizer(tokenizer_object=tokenizer, bos_token=EOS, eos_token=EOS)
