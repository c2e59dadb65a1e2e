"""Fixtures for the chat tests: a small knowledge base of Markdown documents ingested
through the real services (``document_upload`` + ``document_process``, in the tenant's
schema) into the session's Milvus Lite server, conversations, committed data for the
Server-Sent Events and websocket tests (whose code runs on other threads), websocket
credentials, and a scripted OpenAI-compatible chat-completions server on 127.0.0.1.

Milvus does not roll back with PostgreSQL: every fixture that indexes a document deletes
its vectors afterwards. Committed rows (conversations, documents, users, keys, sessions and
the audit and usage rows they caused) are removed afterwards too."""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.test import Client
from django_tenants.utils import schema_context

from conftest import SEED_PASSWORD, seed_email

TENANTS = ("acme", "globex")


# --------------------------------------------------------------------------------------
# The test database for runs that select only ``committed_db`` tests
# --------------------------------------------------------------------------------------
def _selection_needs_database(items) -> bool:
    db_fixtures = {"db", "transactional_db", "live_server"}
    return any(
        item.get_closest_marker("django_db") is not None or db_fixtures & set(getattr(item, "fixturenames", ()))
        for item in items
    )


@pytest.fixture(scope="session")
def _test_database_for_committed_db(request, django_test_environment, django_db_blocker):
    """As in apps/core/tests/conftest.py: ``pytest apps/chat/tests/test_consumers.py`` alone
    selects only ``committed_db`` tests, for which pytest-django creates no test database,
    so the root fixture would seed the *configured* database. Create it here."""
    if _selection_needs_database(request.session.items) or connection.settings_dict["NAME"].startswith("test_"):
        yield
        return
    from django.test.utils import setup_databases, teardown_databases

    verbosity = request.config.option.verbose
    with django_db_blocker.unblock():
        created = setup_databases(verbosity=verbosity, interactive=False, aliases={"default"})
    yield
    with django_db_blocker.unblock():
        teardown_databases(created, verbosity=verbosity)


@pytest.fixture(scope="session")
def django_db_setup(_test_database_for_committed_db, django_db_setup):
    """The root fixture (seeded tenants), always on a test database."""
    assert connection.settings_dict["NAME"].startswith("test_"), connection.settings_dict["NAME"]


@pytest.fixture(autouse=True)
def _extractive_by_default(settings, tmp_path):
    """Answers come from the extractive provider unless a test configures a model; uploaded
    files land in a temporary MEDIA_ROOT."""
    settings.CHAT_PROVIDER = "extractive"
    settings.MEDIA_ROOT = str(tmp_path / "media")


# --------------------------------------------------------------------------------------
# Documents: small Markdown files, unique per test
# --------------------------------------------------------------------------------------
def english_doc(token: str) -> str:
    return (
        f"# Vellum {token} printer warranty\n\n"
        f"The Vellum {token} printer comes with a two-year limited warranty from the date of purchase. "
        "The warranty covers defects in materials and workmanship under normal use. "
        "Damage caused by liquids, drops or unofficial repairs is not covered by the warranty.\n\n"
        "## Claims and refunds\n\n"
        f"To make a warranty claim, email support@vellum.example with the serial number of the {token} "
        "printer and the proof of purchase. "
        "Refunds for returned printers are issued within five business days after the printer arrives "
        "at our warehouse.\n"
    )


def chinese_doc(token: str) -> str:
    return (
        f"# 星河云盘{token}会员退款政策\n\n"
        f"星河云盘{token}会员在购买后七天内可以申请全额退款。"
        "退款将在三个工作日内原路退回到您的支付账户。"
        "年度会员超过七天后不支持退款，但可以随时在设置页面关闭自动续费。\n\n"
        "## 存储空间\n\n"
        "普通会员提供两太字节的存储空间，超级会员提供十太字节的存储空间。"
        "会员到期后，超出免费额度的文件会保留九十天，之后将被清理。\n"
    )


def unique_token() -> str:
    """A model number no other test uses (letters only: digits would make it an identifier)."""
    return "".join(secrets.choice("BCDFGHJKLMNPQRSTVWXZ") for _ in range(5))


def _ingest(schema: str, files: dict[str, str], *, actor_role: str = "knowledge_manager") -> list[Any]:
    from apps.accounts.models import User
    from apps.knowledge import services
    from apps.knowledge.models import Document
    from apps.knowledge.search import knowledge_version_bump

    documents = []
    with schema_context(schema):
        # A ``db`` test never commits, so the upload's own on-commit bump never runs: start
        # from an empty search cache so no earlier test's cached hits answer this one.
        knowledge_version_bump()
        actor = User.objects.get(email=seed_email(actor_role, schema))
        for name, text in files.items():
            upload = SimpleUploadedFile(name, text.encode("utf-8"), content_type="text/markdown")
            result = services.document_upload(actor=actor, file=upload, original_name=name)
            assert not result.duplicate, name
            services.document_process(document_id=result.document.pk)
            document = Document.objects.get(pk=result.document.pk)
            assert document.status == "indexed", (document.error_code, document.error_message)
            documents.append(document)
    return documents


def _vectors_delete(schema: str, document_ids: list[str]) -> None:
    from apps.knowledge.services import tenant_key
    from apps.knowledge.vectorstore import vectors_delete

    with schema_context(schema):
        key = tenant_key()
        for document_id in document_ids:
            vectors_delete(tenant_key=key, document_id=str(document_id))


@dataclass
class KnowledgeBase:
    """What ``knowledge(...)`` made: the documents and the token in their text."""

    token: str
    documents: list[Any]

    @property
    def english(self):
        return next(d for d in self.documents if d.original_name.endswith("-en.md"))

    @property
    def chinese(self):
        return next(d for d in self.documents if d.original_name.endswith("-zh.md"))


@pytest.fixture
def knowledge(db, milvus_up) -> Iterator[Callable[..., KnowledgeBase]]:
    """``knowledge(tenant)`` → an English and a Chinese document indexed in that tenant
    (inside the test's transaction); their vectors are deleted afterwards."""
    made: list[tuple[str, list[str]]] = []

    def make(tenant, *, token: str | None = None) -> KnowledgeBase:
        token = token or unique_token()
        files = {f"warranty-{token}-en.md": english_doc(token), f"refund-{token}-zh.md": chinese_doc(token)}
        documents = _ingest(tenant.schema_name, files)
        made.append((tenant.schema_name, [str(d.pk) for d in documents]))
        return KnowledgeBase(token=token, documents=documents)

    yield make
    for schema, ids in made:
        _vectors_delete(schema, ids)
    connection.set_schema_to_public()


# --------------------------------------------------------------------------------------
# Conversations and answers (in the current transaction)
# --------------------------------------------------------------------------------------
@pytest.fixture
def conversation_of(seed_user) -> Callable[..., Any]:
    """``conversation_of(tenant, role="agent", **fields)`` → a conversation that seed user
    started (through ``conversation_create``)."""
    from apps.chat.services import conversation_create

    def make(tenant, role: str = "agent", **fields):
        with schema_context(tenant.schema_name):
            return conversation_create(actor=seed_user(tenant, role), **fields)

    return make


@pytest.fixture
def ask(seed_user) -> Callable[..., Any]:
    """``ask(tenant, conversation, question, role="agent")`` → (AnswerResult, emitted events),
    through ``conversation_ask`` in that tenant's schema."""
    from apps.chat.models import Conversation
    from apps.chat.services import conversation_ask

    def run(tenant, conversation, question: str, *, role: str = "agent", actor=None):
        emitted: list[dict] = []
        actor = actor or seed_user(tenant, role)
        with schema_context(tenant.schema_name):
            fresh = Conversation.objects.get(pk=conversation.pk)
            result = conversation_ask(conversation=fresh, actor=actor, question=question, emit=emitted.append)
        return result, emitted

    return run


@pytest.fixture
def embed_calls(monkeypatch):
    """Every list of texts the embedder is asked for from now on (after the documents of
    the test are indexed), the sentence cache emptied first."""
    from apps.chat.extractive import sentence_vectors
    from apps.knowledge.pipeline.embed import get_embedder

    def start() -> list[list[str]]:
        sentence_vectors().clear()
        embedder = get_embedder()
        calls: list[list[str]] = []
        original = embedder.embed

        def counting(texts):
            calls.append(list(texts))
            return original(texts)

        monkeypatch.setattr(embedder, "embed", counting)
        return calls

    return start


CITED = re.compile(r"(?P<text>[^\[\]]+?)\s*\[(?P<number>\d+)\]")


def cited_passages(answer: str) -> list[tuple[str, int]]:
    """(text, number) for every ``text [n]`` of an extractive answer: the text since the
    previous marker, which the extractive provider copies verbatim from source n."""
    return [(m["text"].strip(), int(m["number"])) for m in CITED.finditer(answer)]


def event_types(events: list[dict]) -> list[str]:
    """The event types in order, with runs of ``answer.delta`` collapsed to one."""
    out: list[str] = []
    for event in events:
        if not (out and out[-1] == event["type"] == "answer.delta"):
            out.append(event["type"])
    return out


def assert_error(response, status: int, code: str) -> dict[str, Any]:
    """The response is ``status`` with ``{"error": {"code", "message", "details"}}`` and that code."""
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "details"}, body
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]
    return body["error"]


# --------------------------------------------------------------------------------------
# Committed data (Server-Sent Events and websocket tests)
# --------------------------------------------------------------------------------------
def _snapshot(schema: str) -> dict[str, set]:
    from apps.audit.models import AuditLog
    from apps.chat.models import Conversation
    from apps.knowledge.models import Document

    with schema_context(schema):
        return {
            "conversations": set(Conversation.objects.values_list("pk", flat=True)),
            "documents": set(Document.objects.values_list("pk", flat=True)),
            "audit": set(AuditLog.objects.values_list("pk", flat=True)),
        }


@dataclass
class Committed:
    """What a committed test made, for ``committed`` to remove afterwards."""

    users: list[tuple[str, Any]] = field(default_factory=list)
    api_keys: list[tuple[str, Any]] = field(default_factory=list)
    logins: list[tuple[str, Client, Any]] = field(default_factory=list)


@pytest.fixture
def committed(committed_db, milvus_up, monkeypatch) -> Iterator[Committed]:
    """Committed database access. Every conversation, document, audit and usage row of acme
    and globex that appears during the test is removed afterwards (documents with their
    vectors and files), as are the users, keys and sessions made through the fixtures below.
    Uploads send no processing task (the tests process in this process)."""
    from apps.accounts.models import ApiKey, User
    from apps.audit.models import AuditLog
    from apps.billing.models import UsageRecord
    from apps.chat.models import Conversation
    from apps.knowledge.models import Document

    monkeypatch.setattr("apps.knowledge.services._enqueue_on_commit", lambda document: None)
    before = {schema: _snapshot(schema) for schema in TENANTS}
    usage_before = set(UsageRecord.objects.values_list("pk", flat=True))
    made = Committed()
    yield made
    connection.set_schema_to_public()
    for schema, client, user in made.logins:
        with schema_context(schema):
            client.logout()
            User.objects.filter(pk=user.pk).update(last_login=user.last_login)
    for schema in TENANTS:
        after = _snapshot(schema)
        with schema_context(schema):
            new_documents = after["documents"] - before[schema]["documents"]
            _vectors_delete(schema, [str(pk) for pk in new_documents])
            Conversation.objects.filter(pk__in=after["conversations"] - before[schema]["conversations"]).delete()
            Document.objects.filter(pk__in=new_documents).update(replaces=None)
            Document.objects.filter(pk__in=new_documents).delete()
            ApiKey.objects.filter(pk__in=[k.pk for s, k in made.api_keys if s == schema]).delete()
            User.objects.filter(pk__in=[u.pk for s, u in made.users if s == schema]).delete()
            AuditLog.objects.filter(pk__in=_snapshot(schema)["audit"] - before[schema]["audit"]).delete()
    UsageRecord.objects.exclude(pk__in=usage_before).filter(tenant__schema_name__in=TENANTS).delete()
    connection.set_schema_to_public()


@pytest.fixture
def committed_knowledge(committed) -> Callable[..., KnowledgeBase]:
    """``committed_knowledge(schema)`` → the two documents of ``knowledge``, committed."""

    def make(schema: str = "acme", *, token: str | None = None) -> KnowledgeBase:
        token = token or unique_token()
        files = {f"warranty-{token}-en.md": english_doc(token), f"refund-{token}-zh.md": chinese_doc(token)}
        return KnowledgeBase(token=token, documents=_ingest(schema, files))

    return make


@pytest.fixture
def committed_conversation(committed) -> Callable[..., Any]:
    """``committed_conversation(schema, role="agent", **fields)`` → a committed conversation
    started by that seed user."""
    from apps.accounts.models import User
    from apps.chat.services import conversation_create

    def make(schema: str = "acme", role: str = "agent", **fields):
        with schema_context(schema):
            actor = User.objects.get(email=seed_email(role, schema))
            return conversation_create(actor=actor, **fields)

    return make


@pytest.fixture
def session_cookie_for(committed) -> Callable[..., str]:
    """``session_cookie_for(schema, role)`` → the ``sessionid`` of a real login of that seed
    user (``email=`` for another user); logged out afterwards."""
    from apps.accounts.models import User

    def login(schema: str, role: str = "agent", *, email: str | None = None) -> str:
        with schema_context(schema):
            user = User.objects.get(email=email or seed_email(role, schema))
            client = Client(HTTP_HOST=f"{schema}.localhost")
            assert client.login(email=user.email, password=SEED_PASSWORD)
        committed.logins.append((schema, client, user))
        return client.cookies[settings.SESSION_COOKIE_NAME].value

    return login


@pytest.fixture
def committed_user(committed) -> Callable[..., Any]:
    """``committed_user(schema, roles)`` → a committed user with those roles (deleted afterwards)."""
    from apps.accounts.services import user_create

    def make(schema: str, roles: list[str]):
        with schema_context(schema):
            user = user_create(email=f"chat-{secrets.token_hex(4)}@{schema}.test", password=SEED_PASSWORD, roles=roles)
        committed.users.append((schema, user))
        return user

    return make


@pytest.fixture
def committed_api_key(committed) -> Callable[..., str]:
    """``committed_api_key(schema, roles=["agent"])`` → a committed raw API key."""
    from apps.accounts.services import api_key_create

    def make(schema: str, roles: list[str] | None = None) -> str:
        with schema_context(schema):
            issued = api_key_create(name=f"chat-test-{secrets.token_hex(3)}", roles=roles or ["agent"], actor=None)
        committed.api_keys.append((schema, issued.api_key))
        return issued.key

    return make


# --------------------------------------------------------------------------------------
# A scripted OpenAI-compatible chat-completions server (Server-Sent Events)
# --------------------------------------------------------------------------------------
def completion_chunk(content: str | None = None, *, finish_reason: str | None = None) -> dict:
    delta = {} if content is None else {"content": content}
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion.chunk",
        "model": "gpt-test",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }


class ChatHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 with a chunked body, like vLLM or uvicorn. Each request runs the next script
    of the plan (``script(handler)``), or streams ``reply`` when the plan is empty."""

    protocol_version = "HTTP/1.1"
    state: ScriptedChatServer

    def log_message(self, format, *args):
        pass

    def handle(self) -> None:
        with contextlib.suppress(ConnectionError):
            super().handle()

    def start(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()

    def write(self, data: str) -> None:
        raw = data.encode("utf-8")
        self.wfile.write(f"{len(raw):x}\r\n".encode() + raw + b"\r\n")
        self.wfile.flush()

    def delta(self, text: str) -> None:
        self.write(f"data: {json.dumps(completion_chunk(text), ensure_ascii=False)}\n\n")

    def finish_stream(self) -> None:
        self.write(f"data: {json.dumps(completion_chunk(finish_reason='stop'))}\n\n")
        self.write("data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def hang_up(self) -> None:
        """Drop the connection in the middle of the body."""
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_RDWR)

    def stall(self, seconds: float = 10.0) -> None:
        self.state.release.wait(seconds)

    def stream(self, pieces: list[str]) -> None:
        self.start()
        for piece in pieces:
            self.delta(piece)
        self.finish_stream()

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.state.lock:
            self.state.requests.append(body)
            script = self.state.plan.pop(0) if self.state.plan else None
        try:
            if script is None:
                self.stream(self.state.reply)
            else:
                script(self)
        except OSError:
            self.close_connection = True  # the client gave up (timeout tests)


@dataclass
class ScriptedChatServer:
    url: str = ""
    reply: list[str] = field(default_factory=lambda: ["OK."])
    plan: list[Callable[[ChatHandler], None]] = field(default_factory=list)
    requests: list[dict] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    release: threading.Event = field(default_factory=threading.Event)


@pytest.fixture
def chat_server() -> Iterator[ScriptedChatServer]:
    state = ScriptedChatServer()
    handler = type("Handler", (ChatHandler,), {"state": state})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield state
    finally:
        state.release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture
def openai_provider(settings, chat_server) -> Iterator[Callable[..., ScriptedChatServer]]:
    """``openai_provider(**settings)`` → answers come from ``chat_server`` (CHAT_PROVIDER
    "openai", no retries, short timeouts unless given)."""
    from apps.chat import llm

    llm._openai_chat_provider.cache_clear()

    def configure(**overrides: Any) -> ScriptedChatServer:
        values = {
            "CHAT_PROVIDER": "openai",
            "OPENAI_CHAT_BASE_URL": chat_server.url,
            "OPENAI_CHAT_API_KEY": "sk-test",
            "OPENAI_CHAT_MODEL": "gpt-test",
            "CHAT_TIMEOUT": 5.0,
            "CHAT_STREAM_IDLE_TIMEOUT": 5.0,
            "CHAT_MAX_RETRIES": 0,
            **overrides,
        }
        for name, value in values.items():
            setattr(settings, name, value)
        return chat_server

    yield configure
    llm._openai_chat_provider.cache_clear()
