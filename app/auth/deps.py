"""The bearer check as FastAPI dependencies, declared once per router or route group.

`require_scope("write")` or `scope_by_method()` go in a router's `dependencies=[...]`; the
principal they establish is kept on the request, so a route-level dependency with a stricter
scope checks it again without spending another rate-limit token.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, params
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.auth.quota import UploadQuota, upload_quota
from app.auth.scopes import Scope
from app.auth.service import ANYONE, Authenticator, Principal, check_scope

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="APIKey",
    description="An API key from `ckpt keys create` (or POST /v1/keys), sent as a bearer token.",
)
BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# The web UI keeps the key the user pasted in this cookie (SameSite=Strict), because a browser
# cannot send a bearer header when it follows a link. It counts for safe methods only, so a page
# elsewhere can never make a browser change anything with it.
KEY_COOKIE = "ckpt_api_key"


async def _principal(
    request: Request, credentials: HTTPAuthorizationCredentials | None
) -> Principal:
    known: Principal | None = getattr(request.state, "principal", None)
    if known is None:
        authenticator: Authenticator = request.app.state.auth
        if authenticator.known_open():
            known = ANYONE
        else:
            key = credentials.credentials if credentials else _cookie_key(request)
            known = await run_in_threadpool(authenticator.authenticate, key)
        request.state.principal = known
    return known


def _cookie_key(request: Request) -> str | None:
    return request.cookies.get(KEY_COOKIE) if request.method in SAFE_METHODS else None


def _action(request: Request) -> str:
    return f"{request.method} {request.url.path}"


def require_scope(scope: Scope) -> params.Depends:
    """Every route of the group needs `scope` (or a wider one)."""

    async def authorize(request: Request, credentials: BearerDep) -> Principal:
        principal = await _principal(request, credentials)
        check_scope(principal, scope, _action(request))
        return principal

    return params.Depends(authorize)


def scope_by_method(*, safe: Scope = "read", unsafe: Scope = "write") -> params.Depends:
    """GET/HEAD need `safe`; anything that changes state needs `unsafe`."""

    async def authorize(request: Request, credentials: BearerDep) -> Principal:
        principal = await _principal(request, credentials)
        needed = safe if request.method in SAFE_METHODS else unsafe
        check_scope(principal, needed, _action(request))
        return principal

    return params.Depends(authorize)


def _caller(request: Request) -> Principal:
    principal: Principal | None = getattr(request.state, "principal", None)
    if principal is None:
        raise RuntimeError(f"{_action(request)} has no require_scope/scope_by_method dependency")
    return principal


def _upload_quota(request: Request) -> UploadQuota:
    authenticator: Authenticator = request.app.state.auth
    return upload_quota(authenticator.keys.db, _caller(request))


CallerDep = Annotated[Principal, Depends(_caller)]
UploadQuotaDep = Annotated[UploadQuota, Depends(_upload_quota)]
