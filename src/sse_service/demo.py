"""The demo page at ``/`` and its development-only token helpers.

The page itself is harmless: it is ``static/demo.html`` driving
``static/sse-client.js``.  ``POST /demo/token`` and ``POST /demo/session``
are not: they sign a token for whatever user the caller names, with the
service's own HS256 secret.  They exist only while ``SSE_DEMO_PAGE`` is on
(it is off by default) and such a secret is configured, and they answer only
a request whose socket peer is a loopback address and that carries no
forwarding header.

That check cannot see through a proxy on the same host: one that connects
from a loopback address and adds no forwarding header (a sidecar, Dapr's
service invocation, a local reverse proxy) makes every caller behind it look
local.  Hence the demo stays off wherever such a proxy runs beside the
service, which is every pod with a Dapr sidecar.
"""

from __future__ import annotations

import ipaddress
from importlib.resources import files
from typing import Literal

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

from .auth import mint_token
from .config import Settings
from .stream import COOKIE_NAME

__all__ = ["FORWARDING_HEADERS", "TokenRequest", "demo_router", "is_loopback"]

#: The longest token the demo hands out: long enough for an afternoon, short
#: enough that a leaked one is not a standing credential.
MAX_TTL_SECONDS = 86_400
_MINT_MARKER = "__MINT__"


class TokenRequest(BaseModel):
    user: str = Field(min_length=1, max_length=256)
    ttl: int = Field(3600, ge=1, le=MAX_TTL_SECONDS)


class SessionRequest(TokenRequest):
    same_site: Literal["lax", "strict", "none"] = "lax"


#: Headers a proxy adds to say whom it forwards for.  A request carrying any
#: of them came through a proxy, whatever its peer address, and uvicorn may
#: already have replaced the peer address in the scope with what they claim.
FORWARDING_HEADERS = frozenset(
    {"forwarded", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "x-real-ip"}
)
_REFUSED = "development tokens are only minted for local clients"


def is_loopback(host: str) -> bool:
    """True for an IP address in 127.0.0.0/8, ``::1`` or ``::ffff:127.x``; not for names."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def _local_only(request: Request) -> None:
    # Some proxies spell header names with underscores.
    names = {name.replace("_", "-") for name in request.headers}
    forwarded = sorted(names & FORWARDING_HEADERS)
    if forwarded:
        raise HTTPException(403, f"{_REFUSED}: the request came through a proxy ({forwarded[0]})")
    # The peer of the socket, as the server read it (no forwarding header
    # means nothing rewrote it).
    client = request.scope.get("client")
    if not client or not is_loopback(str(client[0])):
        raise HTTPException(403, f"{_REFUSED}: the peer address is not a loopback address")


def can_mint(settings: Settings) -> bool:
    return settings.jwt_secret is not None and "HS256" in settings.jwt_algorithms


def demo_router(settings: Settings) -> APIRouter:
    """``GET /`` always; the token helpers only when :func:`can_mint`."""
    router = APIRouter(include_in_schema=False)
    minting = can_mint(settings)
    template = (files("sse_service") / "static" / "demo.html").read_text(encoding="utf-8")
    # The page hides its "mint" controls when this server cannot mint.
    page = template.replace(_MINT_MARKER, "true" if minting else "false")

    @router.get("/")
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"cache-control": "no-cache"})

    if not minting or settings.jwt_secret is None:
        return router
    secret = settings.jwt_secret.get_secret_value()

    @router.post("/demo/token", dependencies=[Depends(_local_only)])
    async def token(body: TokenRequest) -> dict[str, str]:
        return {"token": mint_token(secret, body.user, body.ttl)}

    @router.post("/demo/session", dependencies=[Depends(_local_only)])
    async def session(body: SessionRequest, response: Response) -> dict[str, str]:
        # What a real auth backend does at login: the browser keeps the token
        # where script cannot read it and sends it with every stream request.
        response.set_cookie(
            COOKIE_NAME,
            mint_token(secret, body.user, body.ttl),
            max_age=body.ttl,
            path="/",
            secure=True,
            httponly=True,
            samesite=body.same_site,
        )
        return {"user": body.user, "expires_in": str(body.ttl)}

    @router.delete("/demo/session")
    async def logout(response: Response) -> dict[str, str]:
        response.delete_cookie(COOKIE_NAME, path="/", secure=True, httponly=True)
        return {"status": "logged out"}

    return router
