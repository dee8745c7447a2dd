"""`ckpt generate`: text from a stored checkpoint, streamed token by token with --stream."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from app.client import Client, GenerationParameters
from app.commands.common import EXIT_OK, handler, print_json


def add_generation_commands(commands: Any, options: argparse.ArgumentParser) -> None:
    generate = commands.add_parser(
        "generate", parents=[options], help="generate text with a checkpoint (TGI API)"
    )
    generate.add_argument("ref", help="checkpoint ref")
    generate.add_argument("prompt")
    generate.add_argument("--stream", action="store_true", help="print tokens as they come")
    generate.add_argument("--max-new-tokens", type=int, default=32)
    generate.add_argument("--do-sample", action="store_true", help="sample instead of greedy")
    generate.add_argument("--temperature", type=float, default=None)
    generate.add_argument("--top-p", type=float, default=None)
    generate.add_argument("--top-k", type=int, default=None)
    generate.add_argument("--repetition-penalty", type=float, default=None)
    generate.add_argument("--seed", type=int, default=None)
    generate.add_argument("--stop", nargs="+", default=None, help="stop sequences")
    generate.set_defaults(handler=handler(_generate))


def _parameters(args: argparse.Namespace) -> GenerationParameters:
    parameters = GenerationParameters(max_new_tokens=args.max_new_tokens)
    if args.do_sample:
        parameters["do_sample"] = True
    if args.temperature is not None:
        parameters["temperature"] = args.temperature
    if args.top_p is not None:
        parameters["top_p"] = args.top_p
    if args.top_k is not None:
        parameters["top_k"] = args.top_k
    if args.repetition_penalty is not None:
        parameters["repetition_penalty"] = args.repetition_penalty
    if args.seed is not None:
        parameters["seed"] = args.seed
    if args.stop:
        parameters["stop"] = args.stop
    return parameters


def _generate(args: argparse.Namespace, client: Client) -> int:
    parameters = _parameters(args)
    if not args.stream:
        result = client.generate(args.ref, args.prompt, **parameters)
        if args.json:
            print_json(result)
        else:
            sys.stdout.write(result.generated_text + "\n")
        return EXIT_OK
    for event in client.generate_stream(args.ref, args.prompt, **parameters):
        if args.json:  # one JSON document per line, as the events arrive
            sys.stdout.write(json.dumps(event.model_dump(mode="json")) + "\n")
        elif not event.token.special:
            sys.stdout.write(event.token.text)
        sys.stdout.flush()
    if not args.json:
        sys.stdout.write("\n")
    return EXIT_OK
