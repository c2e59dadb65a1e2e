"""Base settings shared by every environment. Everything configurable comes from the
environment (django-environ); see .env.example for the documented variables."""

from datetime import timedelta
from pathlib import Path

import environ
from django.utils.translation import gettext_lazy as _

BASE_DIR = Path(__file__).resolve().parent.parent.parent

env = environ.Env()
if (BASE_DIR / ".env").exists():
    environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

SECRET_KEY = env("DJANGO_SECRET_KEY", default="dev-insecure-change-me")
DEBUG = env.bool("DJANGO_DEBUG", default=False)
# How many reverse proxies sit in front of the app (X-Forwarded-For is trusted that far).
TRUSTED_PROXY_COUNT = env.int("TRUSTED_PROXY_COUNT", default=0)
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=[".localhost", "localhost", "127.0.0.1"])

# --------------------------------------------------------------------------------------
# Apps. Decided once (moving an app between the lists later needs fake-zero migrations):
# the public schema holds the platform (tenants, plans, billing); every tenant schema holds
# that tenant's users, knowledge, chat, integrations and audit log. accounts and audit live
# in both: platform operators and platform-level audit events live in the public schema.
# --------------------------------------------------------------------------------------
SHARED_APPS = [
    "django_tenants",
    "daphne",
    "apps.core",
    "apps.tenancy",
    "apps.billing",
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.admin",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "knox",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "apps.accounts",
    "apps.audit",
]
TENANT_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.admin",
    "knox",
    "apps.accounts",
    "apps.audit",
    "apps.knowledge",
    "apps.chat",
    "apps.integrations",
]
INSTALLED_APPS = list(SHARED_APPS) + [app for app in TENANT_APPS if app not in SHARED_APPS]

TENANT_MODEL = "tenancy.Tenant"
TENANT_DOMAIN_MODEL = "tenancy.Domain"
PUBLIC_SCHEMA_NAME = "public"
# New tenants are cloned from this always-migrated template schema instead of replaying
# every migration (≈0.1–0.3 s instead of >1 s; see bench/tenant_create.py).
TENANT_BASE_SCHEMA = env("TENANT_BASE_SCHEMA", default="tenant_template")
TENANT_CREATION_FAKES_MIGRATIONS = True
# Send `SET search_path` once per connection and tenant switch instead of before every
# statement (bench/README.md: 1.5 ms per query in search). django-tenants forgets the cached
# path on set_tenant/set_schema, close, rollback and savepoint rollback; nothing in Zhida
# sets search_path by hand.
TENANT_LIMIT_SET_CALLS = env.bool("TENANT_LIMIT_SET_CALLS", default=True)
PUBLIC_DOMAIN = env("PUBLIC_DOMAIN", default="localhost")
TENANT_DOMAIN_SUFFIX = env("TENANT_DOMAIN_SUFFIX", default="localhost")
DEFAULT_PLAN = env("DEFAULT_PLAN", default="starter")

MIDDLEWARE = [
    "apps.core.middleware.RequestContextMiddleware",
    "apps.core.middleware.HealthCheckMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",  # static files on any host, before tenant lookup
    "apps.tenancy.middleware.TenantMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "apps.core.middleware.ApiErrorMiddleware",
]

ROOT_URLCONF = "config.urls"
PUBLIC_SCHEMA_URLCONF = "config.urls_public"
WSGI_APPLICATION = None
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.template.context_processors.i18n",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --------------------------------------------------------------------------------------
# Database: one PostgreSQL database, one schema per tenant.
# --------------------------------------------------------------------------------------
DATABASES = {"default": env.db("DATABASE_URL", default="postgres://postgres@127.0.0.1:5432/zhida")}
DATABASES["default"]["ENGINE"] = "django_tenants.postgresql_backend"
DATABASES["default"].setdefault("OPTIONS", {}).setdefault(
    "connect_timeout", env.int("DATABASE_CONNECT_TIMEOUT", default=5)
)
DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("DATABASE_CONN_MAX_AGE", default=0))
# Prepared statements for the search's own hot reads (apps/core/db.py); Django's cursors bind
# on the client and never prepare. Off behind a transaction pooler that cannot keep them.
DATABASE_PREPARED_STATEMENTS = env.bool("DATABASE_PREPARED_STATEMENTS", default=True)
DATABASES["default"]["OPTIONS"].setdefault("prepare_threshold", 5 if DATABASE_PREPARED_STATEMENTS else None)
DATABASE_ROUTERS = ("django_tenants.routers.TenantSyncRouter",)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --------------------------------------------------------------------------------------
# Redis: cache (tenant-prefixed keys), sessions, Celery broker, channel layer.
# --------------------------------------------------------------------------------------
REDIS_URL = env("REDIS_URL", default="redis://127.0.0.1:6379/0")
CACHES = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_FUNCTION": "django_tenants.cache.make_key",
        "REVERSE_KEY_FUNCTION": "django_tenants.cache.reverse_key",
        "OPTIONS": {
            "CLIENT_CLASS": "django_redis.client.DefaultClient",
            "SOCKET_CONNECT_TIMEOUT": 1,
            "SOCKET_TIMEOUT": 1,
        },
    }
}
# Sessions live only in Redis (seed: session:{id}, TTL 3600 s); the key is tenant-prefixed,
# so a session made on one tenant's domain does not exist on another's.
SESSION_ENGINE = "apps.accounts.session_store"
SESSION_COOKIE_AGE = env.int("SESSION_COOKIE_AGE", default=3600)
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False

# --------------------------------------------------------------------------------------
# Auth
# --------------------------------------------------------------------------------------
AUTH_USER_MODEL = "accounts.User"
AUTHENTICATION_BACKENDS = ["apps.accounts.backends.EmailBackend"]
PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.Argon2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 8}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "admin:login"
INVITATION_MAX_AGE = env.int("INVITATION_MAX_AGE", default=7 * 24 * 3600)

# --------------------------------------------------------------------------------------
# i18n: Chinese by default, English switchable (Accept-Language, the django_language cookie,
# or POST /i18n/setlang/).
# --------------------------------------------------------------------------------------
LANGUAGE_CODE = env("LANGUAGE_CODE", default="zh-hans")
LANGUAGES = [("zh-hans", _("Simplified Chinese")), ("en", _("English"))]
LOCALE_PATHS = [BASE_DIR / "locale"]
TIME_ZONE = env("TIME_ZONE", default="Asia/Shanghai")
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
MEDIA_ROOT = Path(env("MEDIA_ROOT", default=str(BASE_DIR / "var" / "media")))
MEDIA_URL = "/media/"

# --------------------------------------------------------------------------------------
# DRF
# --------------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "apps.accounts.authentication.ApiKeyAuthentication",
        "knox.auth.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "apps.core.exceptions.api_exception_handler",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 50,
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
REST_KNOX = {
    # Bearer tokens for people expire (re-login); machine clients use API keys instead.
    "TOKEN_TTL": timedelta(hours=env.int("AUTH_TOKEN_TTL_HOURS", default=24)),
    "AUTH_HEADER_PREFIX": "Token",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Zhida API",
    "DESCRIPTION": "Zhida (知答) multi-tenant knowledge-base assistant. Every error is "
    '`{"error": {"code", "message", "details"}}` with a stable code.',
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
}

# --------------------------------------------------------------------------------------
# Celery (tenant schema travels with each task via tenant-schemas-celery)
# --------------------------------------------------------------------------------------
CELERY_BROKER_URL = env("CELERY_BROKER_URL", default="redis://127.0.0.1:6379/1")
CELERY_RESULT_BACKEND = env("CELERY_RESULT_BACKEND", default="redis://127.0.0.1:6379/1")
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TIMEZONE = TIME_ZONE
CELERY_TASK_ALWAYS_EAGER = False
# Worker processes (prefork), each running one task at a time. The embedding model's forward
# pass keeps one core busy; with two processes, one document's extraction, chunking,
# PostgreSQL, Redis and Milvus work runs while another document is embedded (bench/README.md,
# ingestion). Not one per core: every Milvus write takes the one vector write lock, and on 2
# cores 3 processes spent their time waiting for it (the subset: ratio 0.53 against 0.88).
CELERY_WORKER_CONCURRENCY = env.int("CELERY_WORKER_CONCURRENCY", default=2)
# Worker processes keep their PostgreSQL connection between tasks (seconds; checked before
# reuse; config/celery_app.py). Closed after every task, a document, it cost a new one each
# time: about 5 ms of PostgreSQL CPU and as long again waiting. 0 closes it after every task.
WORKER_DB_CONN_MAX_AGE = env.int("WORKER_DB_CONN_MAX_AGE", default=300)
# Celery's Django fixup closes the connections after every task unless told to reuse them
# this many tasks; WORKER_DB_CONN_MAX_AGE decides instead.
CELERY_DB_REUSE_MAX = 1_000_000

# --------------------------------------------------------------------------------------
# Channels
# --------------------------------------------------------------------------------------
# A consumer waits for its messages with BZPOPMIN for 5 s (channels_redis' brpop_timeout);
# redis-py >= 6 times every read out after 5 s unless told otherwise, so an idle socket's
# wait raced that timeout and the consumer died (close 1011). Reads get more than the wait.
CHANNEL_REDIS_SOCKET_TIMEOUT = 15
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {
            # Every socket of a server process shares one Redis queue, and group_send drops
            # what does not fit (silently): channels_redis' default of 100 lost the events of
            # answers streaming to a few dozen sockets at once. Messages still expire in 60 s.
            "capacity": env.int("CHANNEL_LAYER_CAPACITY", default=5000),
            "hosts": [
                {
                    "address": env("CHANNEL_REDIS_URL", default="redis://127.0.0.1:6379/2"),
                    "socket_timeout": CHANNEL_REDIS_SOCKET_TIMEOUT,
                }
            ],
        },
    }
}

# --------------------------------------------------------------------------------------
# Milvus (Milvus Lite server process by default; a standalone/cluster URI in production)
# --------------------------------------------------------------------------------------
MILVUS_URI = env("MILVUS_URI", default="http://127.0.0.1:19530")
MILVUS_TOKEN = env("MILVUS_TOKEN", default="")
HEALTHCHECK_TIMEOUT = env.float("HEALTHCHECK_TIMEOUT", default=2.0)

# --------------------------------------------------------------------------------------
# Logging: one JSON object per line, with request id and tenant schema.
# --------------------------------------------------------------------------------------
LOG_LEVEL = env("LOG_LEVEL", default="INFO")
LOG_FORMAT = env("LOG_FORMAT", default="json")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"context": {"()": "apps.core.logging.RequestContextFilter"}},
    "formatters": {
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s %(tenant)s",
            "rename_fields": {"asctime": "ts", "levelname": "level", "name": "logger"},
        },
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s [%(tenant)s %(request_id)s] %(message)s"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT, "filters": ["context"]},
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        "daphne": {"level": "WARNING"},
    },
}

# Email is unique case-insensitively (UNIQUE(lower(email)) in accounts.User.Meta), which
# Django's check cannot see.
SILENCED_SYSTEM_CHECKS = ["auth.W004"]
FORMS_URLFIELD_ASSUME_HTTPS = True  # Django 6 default, opted into now

# --------------------------------------------------------------------------------------
# Knowledge ingestion: chunking (apps/knowledge/pipeline/chunk.py) and embeddings
# (apps/knowledge/pipeline/embed.py). See .env.example.
# --------------------------------------------------------------------------------------
CHUNK_MAX_TOKENS = env.int("CHUNK_MAX_TOKENS", default=512)  # cl100k_base tokens per chunk
CHUNK_OVERLAP_TOKENS = env.int("CHUNK_OVERLAP_TOKENS", default=64)  # < CHUNK_MAX_TOKENS
EMBEDDING_PROVIDER = env("EMBEDDING_PROVIDER", default="local")  # "local" | "openai"
EMBEDDING_BATCH_SIZE = env.int("EMBEDDING_BATCH_SIZE", default=32)
OPENAI_EMBEDDING_BASE_URL = env("OPENAI_EMBEDDING_BASE_URL", default="")
OPENAI_EMBEDDING_API_KEY = env("OPENAI_EMBEDDING_API_KEY", default="")
OPENAI_EMBEDDING_MODEL = env("OPENAI_EMBEDDING_MODEL", default="text-embedding-3-small")
EMBEDDING_TIMEOUT = env.float("EMBEDDING_TIMEOUT", default=30.0)  # seconds per request
EMBEDDING_MAX_RETRIES = env.int("EMBEDDING_MAX_RETRIES", default=3)  # after the first try
# ------------------------------------------------------------------ end knowledge ingestion

# --------------------------------------------------------------------------------------
# Vector store
# --------------------------------------------------------------------------------------
MILVUS_MODE = env("MILVUS_MODE", default="lite")  # lite (partition per tenant) | server (partition key)
MILVUS_COLLECTION = env("MILVUS_COLLECTION", default="document_vectors")
MILVUS_TIMEOUT = env.float("MILVUS_TIMEOUT", default=10.0)
MILVUS_WRITE_LOCK_TIMEOUT = env.int("MILVUS_WRITE_LOCK_TIMEOUT", default=300)
# Lite: a tenant's collection is sealed (flushed) at the end of a document once this many
# rows await it (vectorstore.vectors_commit). 1 = every document: Lite re-reads unsealed rows
# on every search. (BM25 no longer depends on segments: apps/knowledge/bm25.py.)
MILVUS_LITE_SEAL_ROWS = env.int("MILVUS_LITE_SEAL_ROWS", default=1)

# --------------------------------------------------------------------------------------
# Documents
# --------------------------------------------------------------------------------------
DOCUMENT_MAX_SIZE = env.int("DOCUMENT_MAX_SIZE", default=100 * 1024 * 1024)  # bytes
DOCUMENT_MAX_ATTEMPTS = env.int("DOCUMENT_MAX_ATTEMPTS", default=5)  # tries before a stuck document fails
DOCUMENT_STALE_AFTER = env.int("DOCUMENT_STALE_AFTER", default=15 * 60)  # seconds without progress
DATA_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024  # non-file form data; files stream to disk
FILE_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024
CELERY_BEAT_SCHEDULE = {
    "knowledge-stale-documents": {"task": "knowledge.documents_stale_sweep", "schedule": 300.0},
}
# The language of an upload nobody gave one and whose text does not tell (zh-CN, zh-TW and en
# are detected: apps/knowledge/pipeline/language.py).
DOCUMENT_DEFAULT_LANGUAGE = env("DOCUMENT_DEFAULT_LANGUAGE", default="zh-CN")
SEARCH_CACHE_TTL = env.int("SEARCH_CACHE_TTL", default=300)  # seconds (seed: search:{hash} TTL 300)
# Threads per process for hybrid's BM25 search, sent beside the embedding and the dense search.
SEARCH_THREADS = env.int("SEARCH_THREADS", default=8)

# --------------------------------------------------------------------------------------
# Answering
# --------------------------------------------------------------------------------------
# Cosine similarity (query vs passage, local USE model) a top hit must reach for the
# assistant to answer; below it the assistant says the knowledge base does not cover the
# question. Calibrated on the eval sets (bench/README.md); re-calibrate for another embedder.
ANSWER_MIN_SIMILARITY = env.float("ANSWER_MIN_SIMILARITY", default=0.3)
ANSWER_MAX_SOURCES = env.int("ANSWER_MAX_SOURCES", default=3)
ANSWER_RETRIEVAL_TOP_K = env.int("ANSWER_RETRIEVAL_TOP_K", default=6)

# --------------------------------------------------------------------------------------
# Chat / LLM: the model that writes answers (apps/chat/llm.py). See .env.example.
# --------------------------------------------------------------------------------------
CHAT_PROVIDER = env("CHAT_PROVIDER", default="extractive")  # "extractive" (no model) | "openai"
OPENAI_CHAT_BASE_URL = env("OPENAI_CHAT_BASE_URL", default="")  # ".../v1" or the bare host
OPENAI_CHAT_API_KEY = env("OPENAI_CHAT_API_KEY", default="")
OPENAI_CHAT_MODEL = env("OPENAI_CHAT_MODEL", default="gpt-4o-mini")
CHAT_TIMEOUT = env.float("CHAT_TIMEOUT", default=30.0)  # seconds to the first token, connecting included
CHAT_STREAM_IDLE_TIMEOUT = env.float("CHAT_STREAM_IDLE_TIMEOUT", default=30.0)  # max stall between chunks
CHAT_MAX_RETRIES = env.int("CHAT_MAX_RETRIES", default=2)  # connection/429/5xx, before the first token only
CHAT_MAX_TOKENS = env.int("CHAT_MAX_TOKENS", default=800)  # per answer; 0 leaves it to the server
CHAT_TEMPERATURE = env.float("CHAT_TEMPERATURE", default=0.1)
# Websocket answers: each one holds a thread of its own pool while it is generated (the model's
# stream included); the deltas are merged to one event per CHAT_STREAM_FLUSH_MS (the first is
# never held), or sooner once CHAT_STREAM_FLUSH_CHARS characters wait. See apps/chat/streaming.py.
CHAT_ANSWER_THREADS = env.int("CHAT_ANSWER_THREADS", default=32)
# Each answer thread keeps its database connection between answers for this many seconds
# (health-checked); 0 closes it after every answer. At most CHAT_ANSWER_THREADS connections
# per web process. Django's own CONN_MAX_AGE (DATABASE_CONN_MAX_AGE) must stay 0 under ASGI.
CHAT_DB_CONN_MAX_AGE = env.int("CHAT_DB_CONN_MAX_AGE", default=300)
CHAT_STREAM_FLUSH_MS = env.float("CHAT_STREAM_FLUSH_MS", default=40.0)
CHAT_STREAM_FLUSH_CHARS = env.int("CHAT_STREAM_FLUSH_CHARS", default=400)
# Extractive answers: sentence embeddings of this many cited passages kept per process (LRU,
# per tenant; about 30 KB a passage of 15 sentences). 0 turns the cache off.
CHAT_SENTENCE_CACHE_PASSAGES = env.int("CHAT_SENTENCE_CACHE_PASSAGES", default=1000)
# ------------------------------------------------------------------ end chat / llm
MODEL_WARMUP = env.bool("MODEL_WARMUP", default=True)  # load models when a web process starts
# A task whose worker died unacknowledged comes back after this long (Redis broker); the
# stale-document sweep recovers ingestion sooner (DOCUMENT_STALE_AFTER).
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": env.int("CELERY_VISIBILITY_TIMEOUT", default=3600)}
