"""Test settings: the real PostgreSQL and Redis, on Redis databases of their own so a
running local stack is never disturbed."""

from .base import *  # noqa: F403
from .base import env

DEBUG = False
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # speed only; prod uses Argon2
REDIS_URL = env("TEST_REDIS_URL", default="redis://127.0.0.1:6379/10")
CACHES["default"]["LOCATION"] = REDIS_URL  # noqa: F405
CELERY_BROKER_URL = env("TEST_CELERY_BROKER_URL", default="redis://127.0.0.1:6379/11")
CELERY_RESULT_BACKEND = CELERY_BROKER_URL
CHANNEL_LAYERS["default"]["CONFIG"]["hosts"][0]["address"] = env(  # noqa: F405
    "TEST_CHANNEL_REDIS_URL", default="redis://127.0.0.1:6379/12"
)
LOG_FORMAT = "plain"
LOGGING["handlers"]["console"]["formatter"] = "plain"  # noqa: F405
LOGGING["root"]["level"] = "WARNING"  # noqa: F405
MEDIA_ROOT = BASE_DIR / "var" / "test-media"  # noqa: F405

# One test database per run (suffix: pid), so concurrent runs on one machine never share.
import os  # noqa: E402

DATABASES["default"]["TEST"] = {  # noqa: F405
    "NAME": env("TEST_DATABASE_NAME", default=f"test_zhida_{os.getpid()}")
}
STATIC_ROOT = None  # tests serve no collected static files (and WhiteNoise then stays quiet)
MODEL_WARMUP = False
# Answer threads close their connections after every answer, or the test database could not
# be dropped at the end of a run (test_consumers.py checks the keeping itself).
CHAT_DB_CONN_MAX_AGE = 0
