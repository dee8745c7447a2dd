"""Scopes are ordered: each one allows everything the ones before it allow."""

from __future__ import annotations

from typing import Literal, get_args

Scope = Literal["read", "write", "admin"]
SCOPES: tuple[Scope, ...] = get_args(Scope)


def allows(granted: str, needed: Scope) -> bool:
    return granted in SCOPES and SCOPES.index(granted) >= SCOPES.index(needed)
