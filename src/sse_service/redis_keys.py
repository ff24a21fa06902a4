"""Every Redis key and pub/sub channel the service uses, in one place.

All names of one user share the hash tag ``{u:<encoded id>}``, so on Redis
Cluster they live in one slot: the Lua scripts may touch them together and
the user's shard channel is served by the same node.

The user id is percent-encoded (every byte except ``A-Z a-z 0-9 _ . - ~``),
so an id holding ``{``, ``}`` or ``:`` can neither move the hash tag nor
make two users' names collide.  ``user_of_channel`` reverses it.

===========================  ====================================================
``sse:{u:<id>}:meta``        hash: ``epoch``, ``head`` (the newest offset) and
                             ``server`` (``<run_id>:<master_replid>`` of the
                             Redis that made the epoch)
``sse:{u:<id>}:log``         stream: entry ``<offset>-0`` with fields ``d`` (data)
                             and ``t`` (server time, ms)
``sse:{u:<id>}:seen``        sorted set: dedupe key → offset, trimmed with the log
``sse:{u:<id>}:revoked``     string: the latest sign-out's ``not_before`` (unix
                             seconds); tokens issued before it are refused
                             until the key expires (``SSE_REVOCATION_TTL_SECONDS``)
``sse:{u:<id>}:live:<db>``   channel: each appended record, to every replica, and
                             each sign-out (the messages: :mod:`.redis_messages`)
===========================  ====================================================

Pub/sub ignores the database number, so the channel name carries it: two
deployments sharing one server on different databases never hear each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, unquote

__all__ = ["PREFIX", "UserKeys", "encode_user_id", "user_keys", "user_of_channel"]

PREFIX = "sse:"
_TAG_OPEN = PREFIX + "{u:"
_CHANNEL_INFIX = "}:live:"


def encode_user_id(user_id: str) -> str:
    """An injective, brace-free spelling of ``user_id``."""
    return quote(user_id, safe="")


@dataclass(frozen=True, slots=True)
class UserKeys:
    meta: str
    log: str
    seen: str
    channel: str
    revoked: str

    @property
    def keys(self) -> list[str]:
        """The ``KEYS`` of both history scripts, in the order they expect
        (``REPLAY`` takes :attr:`revoked` as a fourth)."""
        return [self.meta, self.log, self.seen]


def user_keys(user_id: str, db: int = 0) -> UserKeys:
    base = _TAG_OPEN + encode_user_id(user_id)
    return UserKeys(
        meta=base + "}:meta",
        log=base + "}:log",
        seen=base + "}:seen",
        channel=f"{base}{_CHANNEL_INFIX}{db}",
        revoked=base + "}:revoked",
    )


def user_of_channel(channel: bytes | str) -> str | None:
    """The user whose records ``channel`` carries; ``None`` for a foreign name."""
    name = channel.decode("ascii", "replace") if isinstance(channel, bytes) else channel
    if not name.startswith(_TAG_OPEN):
        return None
    encoded, infix, db = name[len(_TAG_OPEN) :].partition(_CHANNEL_INFIX)
    if not (encoded and infix and db.isdigit()) or "{" in encoded or "}" in encoded:
        return None
    try:
        return unquote(encoded, errors="strict")
    except UnicodeDecodeError:
        return None
