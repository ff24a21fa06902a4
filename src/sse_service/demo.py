"""The demo page at ``/`` and its development-only helpers.

The page itself is harmless: it is ``static/demo.html`` driving
``static/sse-client.js``.  ``POST /demo/token`` and ``POST /demo/session``
are not: they sign a token for whatever user the caller names, with the
service's own HS256 secret.  ``POST /demo/publish`` sends a task event to the
user of the token it carries: the CloudEvent ``sse-service publish`` builds
(:mod:`.envelope`), handed in process to the delivery endpoint, so it meets
the very ingest a delivery from daprd meets, and its reply is the Dapr status.

They exist only while ``SSE_DEMO_PAGE`` is on (it is off by default; the two
that mint also need such a secret), and they answer only a request whose
socket peer is a loopback address, whose ``Host`` names a loopback address
(a page on another site that points its own name at 127.0.0.1 still sends
that name) and that carries no forwarding header.

That check cannot see through a proxy on the same host: one that connects
from a loopback address and adds no forwarding header (a sidecar, Dapr's
service invocation, a local reverse proxy) makes every caller behind it look
local.  Hence the demo stays off wherever such a proxy runs beside the
service, which is every pod with a Dapr sidecar.
"""

from __future__ import annotations

import ipaddress
import uuid
from importlib.resources import files
from typing import Literal

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .auth import COOKIE_NAME, Authenticator, credential, mint_token
from .bodies import declared_length
from .config import Settings
from .dapr_routes import DeliveryEndpoint
from .envelope import cloudevent, delivery_headers
from .errors import AuthError
from .events import EVENT_TYPES

__all__ = ["FORWARDING_HEADERS", "MAX_PUBLISH_BYTES", "PublishRequest", "TokenRequest",
           "demo_router", "is_loopback", "names_loopback"]

#: The longest token the demo hands out: long enough for an afternoon, short
#: enough that a leaked one is not a standing credential.
MAX_TTL_SECONDS = 86_400
#: The largest body ``POST /demo/publish`` reads: an event type, a task id and
#: a title of 200 characters fit, even written as surrogate pairs (12 bytes each).
MAX_PUBLISH_BYTES = 4096
MAX_TITLE_CHARS = 200
#: Task ids the page holds exactly: JavaScript's ``Number.MAX_SAFE_INTEGER``.
MAX_TASK_ID = 2**53 - 1
#: The CloudEvent ``source`` of what the demo publishes.
DEMO_SOURCE = "sse-service-demo"
_MINT_MARKER = "__MINT__"


class TokenRequest(BaseModel):
    user: str = Field(min_length=1, max_length=256)
    ttl: int = Field(3600, ge=1, le=MAX_TTL_SECONDS)


class SessionRequest(TokenRequest):
    same_site: Literal["lax", "strict", "none"] = "lax"


class DemoTask(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    id: int = Field(ge=0, le=MAX_TASK_ID)
    title: str | None = Field(None, max_length=MAX_TITLE_CHARS)


class PublishRequest(BaseModel):
    """``{"event": "task.created", "task": {"id": 1, "title": "..."}}``: no user, it is
    the token's."""

    model_config = ConfigDict(extra="forbid", strict=True)

    event: str
    task: DemoTask

    @field_validator("event")
    @classmethod
    def _known_event(cls, value: str) -> str:
        if value not in EVENT_TYPES:
            raise ValueError(f"must be one of {', '.join(sorted(EVENT_TYPES))}")
        return value


#: Headers a proxy adds to say whom it forwards for.  A request carrying any
#: of them came through a proxy, whatever its peer address, and uvicorn may
#: already have replaced the peer address in the scope with what they claim.
FORWARDING_HEADERS = frozenset(
    {"forwarded", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "x-real-ip"}
)
_REFUSED = "the demo's development endpoints answer local clients only"


def is_loopback(host: str) -> bool:
    """True for an IP address in 127.0.0.0/8, ``::1`` or ``::ffff:127.x``; not for names."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def names_loopback(host: str) -> bool:
    """Whether a ``Host`` header value names this machine: a loopback address or
    ``localhost`` (with any port).  No other name counts, not even one that
    resolves to 127.0.0.1 today: that is what a rebinding attack arranges."""
    name = host.lower()
    if name.startswith("["):
        name, bracket, _ = name[1:].partition("]")
        if not bracket:
            return False
    else:
        name = name.partition(":")[0]
    return is_loopback(name) or name == "localhost" or name.endswith(".localhost")


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
    if not names_loopback(request.headers.get("host", "")):
        raise HTTPException(403, f"{_REFUSED}: the Host header names no loopback address")


def can_mint(settings: Settings) -> bool:
    return settings.jwt_secret is not None and "HS256" in settings.jwt_algorithms


def _bearer_or_cookie(request: Request) -> str | None:
    # The stream's rule, less the query token: a publish is a POST from the page.
    return credential(request.headers, {}, allow_query=False)


async def _bounded_body(request: Request, limit: int) -> bytes:
    too_large = HTTPException(413, f"request body over {limit} bytes")
    declared = declared_length(request.headers.get("content-length"))
    if declared is not None and declared > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)


def _reason(exc: ValidationError) -> str:
    """What is wrong with a publish request, in one line (never its values)."""
    problems = []
    for error in exc.errors(include_input=False, include_url=False):
        where = ".".join(str(part) for part in error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        problems.append(f"{where}: {message}" if where else message)
    return "; ".join(problems)


def demo_router(settings: Settings, deliveries: DeliveryEndpoint,
                auth: Authenticator) -> APIRouter:
    """``GET /`` and ``POST /demo/publish`` always; the token helpers only when
    :func:`can_mint`."""
    router = APIRouter(include_in_schema=False)
    minting = can_mint(settings)
    template = (files("sse_service") / "static" / "demo.html").read_text(encoding="utf-8")
    # The page hides its "mint" controls when this server cannot mint.
    page = template.replace(_MINT_MARKER, "true" if minting else "false")
    # The in-process hand-over skips the HTTP route, and with it the app token.
    headers = delivery_headers(settings, app_token=False)

    @router.get("/")
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"cache-control": "no-cache"})

    @router.post("/demo/publish", dependencies=[Depends(_local_only)])
    async def publish(request: Request) -> JSONResponse:
        # JSON only: a page on another site can send text/plain or a form
        # without asking first, but JSON needs a CORS preflight, which this
        # service never grants for a POST.
        media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if media_type != "application/json":
            raise HTTPException(415, "send the event as application/json")
        body = await _bounded_body(request, MAX_PUBLISH_BYTES)
        try:
            identity = await auth.authenticate(_bearer_or_cookie(request))
        except AuthError as exc:
            raise HTTPException(401, exc.reason,
                                {"www-authenticate": 'Bearer error="invalid_token"'}) from None
        try:
            wanted = PublishRequest.model_validate_json(body)
        except ValidationError as exc:
            raise HTTPException(422, _reason(exc)) from None
        event_id = str(uuid.uuid4())
        payload = {"event_type": wanted.event, "user_id": identity.user_id,
                   "task": wanted.task.model_dump(exclude_none=True)}
        reply = await deliveries.answer(
            headers, cloudevent(settings, payload, event_id, DEMO_SOURCE))
        answer = {"status": reply.content.get("status"), "user": identity.user_id,
                  "cloudevent_id": event_id}
        if "reason" in reply.content:
            answer["reason"] = reply.content["reason"]
        return JSONResponse(answer)

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
