"""Sessions in Redis only (seed: ``session:{id}``, TTL SESSION_COOKIE_AGE = 3600 s). The
cache key function adds the tenant schema, so a session created on one tenant's domain
cannot be used on another's."""

from django.contrib.sessions.backends.cache import SessionStore as CacheSessionStore


class SessionStore(CacheSessionStore):
    cache_key_prefix = "session:"
