"""The message on a user's Redis channel: how the scripts write it, how we read it.

A user's channel (``sse:{u:<id>}:live:<db>``, :mod:`.redis_keys`) carries two
kinds of message, both published inside a Lua script (:mod:`.redis_scripts`),
so each is sent in the same step as the write it announces:

=================================  ==============================================
``<epoch> <offset> <data>``        a record, published by ``APPEND`` right after
                                   its ``XADD``: e.g. ``3f9a1c07be 17 {"type":…}``
``!revoked <not_before>``          a sign-out, published by ``REVOKE`` with the
                                   value it kept (unix seconds): ``!revoked 1700000000.5``
=================================  ==============================================

Fields are split at the first two spaces: an epoch is lower-case letters and
digits and an offset is digits, so ``data`` may hold any byte, spaces
included.  An epoch never starts with ``!``, so the two kinds cannot be
confused.

Fan-out is sharded pub/sub (``SPUBLISH``, ``SSUBSCRIBE``): on Redis Cluster a
message stays on the node that serves the user's slot.  The commands are named
here, and only here, beside the payload they carry.
"""

from __future__ import annotations

from dataclasses import dataclass

from .broker import Record

__all__ = [
    "CONFIRMED",
    "LUA_PUBLISH_RECORD",
    "LUA_PUBLISH_REVOKED",
    "MESSAGE",
    "PUBLISH",
    "SUBSCRIBE",
    "UNSUBSCRIBE",
    "Revocation",
    "parse",
]

#: The commands of sharded pub/sub, and the kinds of the replies they bring.
PUBLISH = "SPUBLISH"
SUBSCRIBE = "SSUBSCRIBE"
UNSUBSCRIBE = "SUNSUBSCRIBE"
#: A message pushed to a subscriber: ``[kind, channel, payload]``.
MESSAGE = b"smessage"
#: A subscription confirmed: ``[kind, channel, count]``.
CONFIRMED = b"ssubscribe"

_REVOKED = b"!revoked "
_SEPARATOR = b" "

#: Lua, for ``APPEND``: ``publish_record(channel, epoch, offset, data)``.
LUA_PUBLISH_RECORD = f"""
local function publish_record(channel, epoch, offset, data)
  local sep = '{_SEPARATOR.decode()}'
  redis.call('{PUBLISH}', channel, epoch .. sep .. offset .. sep .. data)
end
"""

#: Lua, for ``REVOKE``: ``publish_revoked(channel, not_before)``.
LUA_PUBLISH_REVOKED = f"""
local function publish_revoked(channel, not_before)
  redis.call('{PUBLISH}', channel, '{_REVOKED.decode()}' .. not_before)
end
"""


@dataclass(frozen=True, slots=True)
class Revocation:
    """A sign-out heard on the channel: the user's tokens issued before
    ``not_before`` (unix seconds) are refused."""

    user_id: str
    not_before: float


def parse(user_id: str, payload: bytes) -> Record | Revocation:
    """The message ``payload`` heard on ``user_id``'s channel.

    Raises :class:`ValueError` for a payload of neither form.
    """
    if payload.startswith(_REVOKED):
        return Revocation(user_id, float(payload[len(_REVOKED):]))
    epoch, _, rest = payload.partition(_SEPARATOR)
    offset, _, data = rest.partition(_SEPARATOR)
    # UnicodeDecodeError is a ValueError too.
    return Record(user_id, epoch.decode("ascii"), int(offset), data)
