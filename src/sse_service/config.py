"""Typed, frozen settings, read once at the edge (environment prefix ``SSE_``).

Nothing else in the package reads the environment: the CLI builds a
:class:`Settings` (environment plus flags) and hands it to :func:`create_app`.
Secrets are :class:`~pydantic.SecretStr`, so they never show in ``repr`` or logs.
"""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import AliasChoices, Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = ["Settings", "redact_url"]

#: Algorithms verified against ``SSE_JWT_SECRET``; never mixed with the JWKS ones.
SYMMETRIC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
#: Algorithms verified against keys from ``SSE_JWKS_URL``.
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)

CommaList = Annotated[tuple[str, ...], NoDecode]


def redact_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***`` (safe to log)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


class Settings(BaseSettings):
    """Every setting of the service; the README lists each with its default."""

    model_config = SettingsConfigDict(
        env_prefix="SSE_", frozen=True, extra="ignore", populate_by_name=True
    )

    host: str = "0.0.0.0"
    port: int = Field(8005, ge=0, le=65535)
    #: SSE_METRICS_PORT: Prometheus metrics (/metrics) on a port of their own; 0 turns
    #: them off.  Not 9090: daprd serves its own metrics there, in the same pod.
    metrics_port: int = Field(9464, ge=0, le=65535)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    access_log: bool = True
    #: SSE_LOG_FORMAT: "text" lines, or "json" (one object per line).
    log_format: Literal["text", "json"] = "text"

    # Authentication
    jwt_secret: SecretStr | None = Field(
        None, validation_alias=AliasChoices("SSE_JWT_SECRET", "BETTER_AUTH_SECRET", "jwt_secret")
    )
    jwks_url: str | None = None
    jwks_cache_seconds: float = Field(300.0, gt=0)
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    jwt_algorithms: CommaList = ("HS256", "RS256", "ES256", "EdDSA")
    jwt_leeway_seconds: float = Field(10.0, ge=0)
    allow_query_token: bool = True
    cors_origins: CommaList = ()

    # Stream
    keepalive_seconds: float = Field(15.0, gt=0)
    retry_ms: int = Field(3000, ge=0)
    queue_size: int = Field(1024, ge=1)
    #: SSE_QUEUE_BYTES: bytes one stream may hold unsent before it is cut as slow_consumer.
    queue_bytes: int = Field(1_048_576, ge=4096)
    max_connections: int = Field(10_000, ge=1)
    max_connections_per_user: int = Field(32, ge=1)
    #: SSE_MAX_CONNECT_RATE: streams admitted per second per process (token bucket,
    #: burst of one second's worth); beyond it 503 with a jittered Retry-After.
    max_connect_rate: float = Field(2000.0, gt=0)
    drain_seconds: float = Field(5.0, ge=0)
    demo_page: bool = False
    #: SSE_STREAM_PATH: "socket" serves /events on the socket under `serve`;
    #: "asgi" keeps it on the portable ASGI endpoint.
    stream_path: Literal["socket", "asgi"] = "socket"

    # HTTP bounds
    #: SSE_MAX_HEADER_BYTES: request line plus headers; larger requests get 431.
    max_header_bytes: int = Field(32_768, ge=1024, le=1_048_576)
    #: SSE_HEADER_TIMEOUT_SECONDS: time a client has to send its request headers.
    header_timeout_seconds: float = Field(10.0, gt=0, le=300)
    #: SSE_MAX_BODY_BYTES: request bodies outside the Dapr route (413 beyond).
    max_body_bytes: int = Field(65_536, ge=1024)
    #: SSE_MAX_DELIVERY_BYTES: one Dapr delivery, bulk included (DROP beyond, never 413).
    max_delivery_bytes: int = Field(16_777_216, ge=65_536)

    # History and backend
    backend: Literal["memory", "redis"] = "memory"
    redis_url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    history_size: int = Field(1000, ge=1)
    history_ttl_seconds: int = Field(86_400, ge=1)
    #: SSE_REVOCATION_TTL_SECONDS: how long a sign-out is remembered: the longest
    #: lifetime of a token your issuer signs.
    revocation_ttl_seconds: int = Field(86_400, ge=1)
    #: SSE_REDIS_TIMEOUT_SECONDS: connect and reply timeout of every Redis call.
    redis_timeout_seconds: float = Field(1.0, gt=0, le=30)

    # Dapr
    pubsub_name: str = "taskpubsub"
    topic: str = "task-updates"
    dead_letter_topic: str | None = None
    dapr_subscribe: bool = True
    max_event_bytes: int = Field(65_536, ge=256)
    app_api_token: SecretStr | None = Field(
        None, validation_alias=AliasChoices("APP_API_TOKEN", "app_api_token")
    )

    @field_validator("jwt_algorithms", "cors_origins", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(item.strip() for item in value.split(",") if item.strip())
        return value

    @field_validator("jwt_algorithms")
    @classmethod
    def _known_algorithms(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = set(value) - SYMMETRIC_ALGORITHMS - ASYMMETRIC_ALGORITHMS
        if unknown:
            raise ValueError(f"unsupported JWT algorithms: {sorted(unknown)} (never 'none')")
        return value

    @field_validator("jwt_secret", "app_api_token", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("metrics_port")
    @classmethod
    def _not_the_listen_port(cls, value: int, info: ValidationInfo) -> int:
        if value and value == info.data.get("port"):
            raise ValueError(f"{value} is the listen port (SSE_PORT) too")
        return value

    @property
    def redis_url_for_logs(self) -> str:
        return redact_url(self.redis_url.get_secret_value())
