"""/v1/keys: API keys managed over HTTP (admin scope)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from app.api.errors import error_responses
from app.auth.deps import require_scope
from app.auth.keys import MAX_NAME_CHARS, MAX_QUOTA_BYTES, CreatedKey, KeyStore, KeyView
from app.auth.scopes import Scope
from app.auth.service import Authenticator

router = APIRouter(
    prefix="/v1/keys",
    tags=["keys"],
    dependencies=[require_scope("admin")],
    responses=error_responses(401, 403),
)


class KeyRequest(BaseModel):
    name: str = Field(min_length=1, max_length=MAX_NAME_CHARS)
    scope: Scope
    quota_bytes: int | None = Field(
        None, ge=0, le=MAX_QUOTA_BYTES, description="storage quota of this key's uploads"
    )


class KeyList(BaseModel):
    items: list[KeyView]


def _keys(request: Request) -> KeyStore:
    authenticator: Authenticator = request.app.state.auth
    return authenticator.keys


KeysDep = Annotated[KeyStore, Depends(_keys)]


@router.get("", response_model=KeyList)
def list_keys(keys: KeysDep) -> KeyList:
    """Every key ever created, revoked ones included; never their secrets."""
    return KeyList(items=keys.list())


@router.post("", status_code=201, response_model=CreatedKey, responses=error_responses(422))
def create_key(body: KeyRequest, keys: KeysDep) -> CreatedKey:
    """A new key; `key` is the secret, shown in this response only."""
    return keys.create(body.name, body.scope, body.quota_bytes)


@router.delete("/{key_id}", response_model=KeyView, responses=error_responses(404))
def revoke_key(key_id: str, keys: KeysDep) -> KeyView:
    """Revoke a key: requests with it answer 401 from now on."""
    return keys.revoke(key_id)
