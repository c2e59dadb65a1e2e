"""Per-request context (request id, client ip, user agent) carried in contextvars so that
logging and the audit log can read it without every service taking a request argument."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass


@dataclass(frozen=True)
class RequestContext:
    request_id: str = "-"
    ip_address: str | None = None
    user_agent: str = ""


_current: contextvars.ContextVar[RequestContext] = contextvars.ContextVar(
    "request_context",
    default=RequestContext(),  # noqa: B039 - frozen dataclass, immutable
)


def request_context_get() -> RequestContext:
    return _current.get()


def request_context_set(ctx: RequestContext) -> contextvars.Token:
    return _current.set(ctx)


def request_context_reset(token: contextvars.Token) -> None:
    _current.reset(token)
