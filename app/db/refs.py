"""Checkpoint references: `id`, `name` (its latest), `name:alias` or `name@version`."""

from __future__ import annotations

import re
from dataclasses import dataclass

from app.errors import InvalidInput

NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
ALIAS_PATTERN = r"[A-Za-z][A-Za-z0-9._-]{0,63}"
_NAME = re.compile(f"^{NAME_PATTERN}$")
_ALIAS = re.compile(f"^{ALIAS_PATTERN}$")
_ID = re.compile(r"^[0-9a-f]{32}$")
LATEST = "latest"


@dataclass(frozen=True)
class Ref:
    id: str | None = None
    name: str | None = None
    alias: str | None = None
    version: int | None = None


def parse_ref(text: str) -> Ref:
    if _ID.match(text):
        return Ref(id=text)
    if "@" in text:
        name, _, version = text.partition("@")
        if not version.isdigit() or int(version) < 1:
            raise InvalidInput(f"bad version in reference {text!r}", code="invalid_ref")
        return Ref(name=check_name(name), version=int(version))
    name, _, alias = text.partition(":")
    return Ref(name=check_name(name), alias=check_alias(alias) if alias else LATEST)


def check_name(name: str) -> str:
    if not _NAME.match(name) or _ID.match(name):
        raise InvalidInput(
            f"invalid checkpoint name {name!r}: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (and not 32 hex digits, which read as an id)",
            code="invalid_name",
        )
    return name


def check_alias(alias: str) -> str:
    if not _ALIAS.match(alias):
        raise InvalidInput(
            f"invalid alias {alias!r}: use 1-64 letters, digits, '.', '_' or '-', starting "
            "with a letter",
            code="invalid_alias",
        )
    return alias
