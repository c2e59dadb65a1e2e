"""The agent console in a real browser (Debian's Chromium driven by Playwright) against a
live daphne server with websockets (``ChannelsLiveServerTestCase``).

How this test stays out of the other tests' way:

* **No flush.** A TransactionTestCase ends by TRUNCATE-ing every table it can see, and with
  django-tenants that is the public schema: tenants, domains and the session fixtures'
  committed rows. ``_fixture_teardown`` is replaced: the test removes exactly what it made
  (conversations, the document, audit and usage rows, the agent's ``last_login``), found by
  comparing ids before and after.
* **No new domain.** The browser talks to ``acme.localhost:<port>``, acme's own seeded
  domain (the tenant middleware drops the port); Chromium is told that host is 127.0.0.1.
* **A spawned server, not a forked one.** By the time this runs the pytest process holds
  gRPC channels to Milvus, database and Redis sockets and helper threads; a forked daphne
  would inherit them half-alive. The server process is started with ``spawn`` and finds the
  test database and its own Milvus Lite through the environment.
* **Its own Milvus Lite**, started here and stopped afterwards: the vectors go with it. The
  session server's cached client is left open (see ``vectorstore.client_forget``).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest
from channels.testing import ChannelsLiveServerTestCase
from daphne.testing import DaphneProcess

CHROMIUM = "/usr/bin/chromium"
pytestmark = [
    pytest.mark.slow,
    # Not used by pytest-django for a TestCase class, but tells the selection helpers in
    # apps/chat/tests/conftest.py that this module uses the test database.
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        not os.path.exists(CHROMIUM),
        reason=f"Chromium is not installed at {CHROMIUM} (Debian: apt-get install chromium)",
    ),
]

HOST = "acme.localhost"
TITLE = "Nimbus Customer Care Handbook"
QUESTION = "How long is the warranty on the Nimbus Z7 vacuum robot?"
ANSWER_FACT = "26 months"
UNRELATED_QUESTION = "一九九八年世界杯足球赛的冠军是哪个国家？"
BROWSER_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    f"--host-resolver-rules=MAP {HOST} 127.0.0.1",
]

# Records, in the page, every websocket event (type and arrival order) and the length of
# the streaming answer each time the DOM changes, so the test can tell streaming from a
# single final render.
RECORDER = """
(() => {
  window.__events = []; window.__sockets = []; window.__lengths = [];
  const Native = window.WebSocket;
  function Recording(url, protocols) {
    const ws = protocols === undefined ? new Native(url) : new Native(url, protocols);
    window.__sockets.push(ws);
    ws.addEventListener("message", (e) => {
      let ev = { type: "unparseable" };
      try { ev = JSON.parse(e.data); } catch (err) { /* recorded as unparseable */ }
      window.__events.push({ type: ev.type, code: ev.code || null, t: performance.now() });
    });
    return ws;
  }
  Recording.prototype = Native.prototype;
  ["CONNECTING", "OPEN", "CLOSING", "CLOSED"].forEach((k) => { Recording[k] = Native[k]; });
  window.WebSocket = Recording;
  new MutationObserver(() => {
    const body = document.querySelector(".msg.is-streaming .msg__body");
    if (body && !body.querySelector(".typing")) {
      const n = body.textContent.length;
      if (!window.__lengths.length || window.__lengths[window.__lengths.length - 1] !== n) { window.__lengths.push(n); }
    }
  }).observe(document, { subtree: true, childList: true, characterData: true });
})();
"""


def pdf_bytes(pages: list[list[str]]) -> bytes:
    """A plain PDF (Helvetica, Latin text only): one page per item, one line per string.
    Kept here rather than imported from another app's test helpers."""
    objects: list[bytes] = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    kids = []
    for lines in pages:
        escaped = [line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") for line in lines]
        content = ("BT /F1 11 Tf 50 780 Td 15 TL " + " ".join(f"({line}) Tj T*" for line in escaped) + " ET").encode(
            "latin-1"
        )
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content))
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents %d 0 R "
            b"/Resources << /Font << /F1 3 0 R >> >> >>" % len(objects)
        )
        kids.append(b"%d 0 R" % len(objects))
    objects[1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(kids), len(pages))
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


HANDBOOK = pdf_bytes(
    [
        [
            "Nimbus Home Robotics - Customer Care Handbook",
            "This handbook explains how our support team helps customers.",
            "Contact the support desk by phone or email during office hours.",
        ],
        [
            "Warranty",
            "The Nimbus Z7 vacuum robot is covered by a warranty of 26 months from the date of purchase.",
            "Batteries are covered for 12 months.",
        ],
    ]
)


class SpawnedDaphneProcess(DaphneProcess):
    """``DaphneProcess`` started with ``spawn`` (see the module docstring). Its shared
    values must come from the spawn context too."""

    _context = multiprocessing.get_context("spawn")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.port = self._context.Value("i", 0)
        self.ready = self._context.Event()
        self.errors = self._context.Queue()

    @staticmethod
    def _Popen(process_obj):  # noqa: N802 - multiprocessing's name
        return multiprocessing.get_context("spawn").Process._Popen(process_obj)


def _ids(model, schema: str) -> set:
    from django_tenants.utils import schema_context

    with schema_context(schema):
        return set(model.objects.values_list("pk", flat=True))


class ConsoleInBrowserTest(ChannelsLiveServerTestCase):
    host = "127.0.0.1"
    ProtocolServerProcess = SpawnedDaphneProcess

    # ---------------------------------------------------------------- class setup
    @classmethod
    def setUpClass(cls):
        from django.db import connection, connections
        from django.test.utils import override_settings

        from apps.core.testing import start_milvus
        from apps.knowledge.vectorstore import client_forget

        cls._workdir = Path(tempfile.mkdtemp(prefix="console-browser-"))
        cls._milvus = start_milvus(cls._workdir)
        cls._settings = override_settings(MILVUS_URI=cls._milvus.url)
        cls._settings.enable()
        client_forget()
        server_environ = {
            "TEST_DATABASE_NAME": connection.settings_dict["NAME"],
            "MILVUS_URI": cls._milvus.url,
            "CHAT_PROVIDER": "extractive",
        }
        cls._environ = {k: os.environ.get(k) for k in server_environ}
        os.environ.update(server_environ)
        connections.close_all()
        try:
            super().setUpClass()
        except BaseException:
            cls._class_cleanup()
            raise
        try:
            cls._snapshot()
            cls.document = cls._handbook_indexed()
        except BaseException:
            cls.tearDownClass()  # stops the server too
            raise

    @classmethod
    def tearDownClass(cls):
        try:
            cls._purge()
        finally:
            try:
                super().tearDownClass()
            finally:
                cls._class_cleanup()

    @classmethod
    def _class_cleanup(cls):
        for key, value in cls._environ.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        cls._settings.disable()
        from apps.knowledge.vectorstore import client_forget

        client_forget(uri=cls._milvus.url)
        cls._milvus.stop()
        shutil.rmtree(cls._workdir, ignore_errors=True)

    @classmethod
    def _snapshot(cls):
        from django_tenants.utils import schema_context

        from apps.accounts.models import User
        from apps.audit.models import AuditLog
        from apps.billing.models import UsageRecord
        from apps.chat.models import Conversation
        from apps.knowledge.models import Document

        cls._before = {
            "conversations": _ids(Conversation, "acme"),
            "documents": _ids(Document, "acme"),
            "audit": _ids(AuditLog, "acme"),
            "usage": _ids(UsageRecord, "public"),
        }
        with schema_context("acme"):
            cls.agent = User.objects.get(email="agent@acme.test")

    @classmethod
    def _handbook_indexed(cls):
        """Upload the handbook through the service; Celery runs eagerly, so processing
        (extract, chunk, embed, index into this test's Milvus) happens on commit, here."""
        from django.core.files.uploadedfile import SimpleUploadedFile
        from django_tenants.utils import schema_context

        from apps.knowledge.models import Document
        from apps.knowledge.services import document_upload
        from config.celery_app import app

        saved = (app.conf.task_always_eager, app.conf.task_eager_propagates)
        app.conf.task_always_eager = app.conf.task_eager_propagates = True
        try:
            with schema_context("acme"):
                result = document_upload(
                    actor=None,
                    file=SimpleUploadedFile("nimbus-handbook.pdf", HANDBOOK),
                    original_name="nimbus-handbook.pdf",
                    title=TITLE,
                )
                document = Document.objects.get(pk=result.document.pk)
        finally:
            app.conf.task_always_eager, app.conf.task_eager_propagates = saved
        assert document.status == "indexed", (document.status, document.error_message)
        return document

    @classmethod
    def _purge(cls):
        """Remove what the test made, and only that (instead of a flush)."""
        from django.db import connection
        from django_tenants.utils import schema_context

        from apps.accounts.models import User
        from apps.audit.models import AuditLog
        from apps.billing.models import UsageRecord
        from apps.chat.models import Conversation
        from apps.knowledge.models import Document
        from apps.tenancy.models import Tenant

        before = getattr(cls, "_before", None)
        if before is None:
            return
        with schema_context("acme"):
            Conversation.objects.exclude(pk__in=before["conversations"]).delete()
            for document in Document.objects.exclude(pk__in=before["documents"]):
                if document.file:
                    document.file.delete(save=False)
            Document.objects.exclude(pk__in=before["documents"]).update(replaces=None)
            Document.objects.exclude(pk__in=before["documents"]).delete()
            AuditLog.objects.exclude(pk__in=before["audit"]).delete()
            User.objects.filter(pk=cls.agent.pk).update(last_login=cls.agent.last_login)
        acme = Tenant.objects.get(schema_name="acme")
        UsageRecord.objects.filter(tenant_id=acme.pk).exclude(pk__in=before["usage"]).delete()
        connection.set_schema_to_public()

    def _fixture_teardown(self):
        """No flush (it would empty the public schema): see ``_purge``."""

    @pytest.fixture(autouse=True)
    def _tmp_path(self, tmp_path):
        self.tmp_path = tmp_path

    # ---------------------------------------------------------------- helpers
    @property
    def url(self) -> str:
        return f"http://{HOST}:{self._port}"

    def shot(self, page, name: str) -> Path:
        path = self.tmp_path / f"{name}.png"
        page.screenshot(path=str(path), full_page=False)
        return path

    # ---------------------------------------------------------------- the scenario
    def test_agent_asks_and_follows_a_citation_to_the_document(self):
        from playwright.sync_api import expect, sync_playwright

        expect.set_options(timeout=30_000)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=BROWSER_ARGS)
            try:
                context = browser.new_context(locale="zh-CN", viewport={"width": 1440, "height": 900})
                context.add_init_script(RECORDER)
                page = context.new_page()
                try:
                    observed = self._scenario(context, page)
                except BaseException:
                    self.shot(page, "failure")
                    raise
            finally:
                browser.close()
        self._check_database(observed)

    def _scenario(self, context, page) -> dict:
        from playwright.sync_api import expect

        observed: dict = {}
        # Anonymous → the login page, in Chinese (the browser asks for zh-CN).
        page.goto(self.url + "/")
        expect(page).to_have_url(self.url + "/console/login/?next=/console/")
        expect(page.locator("h1")).to_have_text("登录坐席控制台")
        self.shot(page, "0-login")
        page.fill("#id_username", "agent@acme.test")
        page.fill("#id_password", "wrong password")
        page.click(".auth-form button[type=submit]")
        expect(page.locator(".banner--error")).to_be_visible()
        page.fill("#id_username", "agent@acme.test")
        page.fill("#id_password", "Seed-Pass-2026!")
        page.click(".auth-form button[type=submit]")
        expect(page).to_have_url(self.url + "/console/")
        expect(page.locator("html")).to_have_attribute("data-console", "ready")
        expect(page.locator("#conn-status")).to_contain_text("未连接")

        # Alt+N starts a conversation; its socket goes live.
        page.locator("body").press("Alt+KeyN")
        expect(page.locator("#conversation")).to_be_visible()
        expect(page.locator("#conn-status")).to_have_attribute("data-state", "open")
        expect(page.locator("#question")).to_be_focused()
        conversation_id = page.evaluate("location.hash.slice(1)")
        observed["conversation_id"] = conversation_id
        expect(page.locator(f'#conversation-list [data-conversation="{conversation_id}"]')).to_have_class(
            re.compile(r"\bis-current\b")
        )

        # Shift+Enter is a new line, Enter sends.
        page.locator("#question").press_sequentially("How long is the warranty")
        page.locator("#question").press("Shift+Enter")
        assert page.input_value("#question") == "How long is the warranty\n"
        page.fill("#question", QUESTION)
        page.locator("#question").press("Enter")
        answer = page.locator(".msg--assistant:not(.is-streaming)").last
        expect(answer).to_contain_text(ANSWER_FACT)
        expect(page.locator(".msg--user .msg__body")).to_have_text(QUESTION)

        events = page.evaluate("window.__events")
        types = [e["type"] for e in events]
        completed = types.index("answer.completed")
        deltas_before = types[:completed].count("answer.delta")
        assert types[0] == "message.created", types
        assert deltas_before >= 2, types
        assert "answer.delta" not in types[completed:], types
        assert types.index("answer.sources") < completed, types
        lengths = page.evaluate("window.__lengths")
        assert len(lengths) >= 2 and lengths == sorted(lengths) and lengths[0] < lengths[-1], lengths
        observed["deltas"] = deltas_before
        self.shot(page, "1-answer")

        # The citation chip opens the sources panel at that passage.
        chip = answer.locator(".cite").first
        expect(chip).to_be_visible()
        chip.click()
        selected = page.locator("#sources-list .source.is-selected")
        expect(selected).to_be_visible()
        expect(selected).to_be_focused()
        expect(selected.locator(".source__title")).to_have_text(TITLE)
        expect(selected.locator(".source__quote")).to_contain_text(ANSWER_FACT)
        expect(selected.locator(".source__meta")).to_contain_text("第 2 页")
        self.shot(page, "2-sources")

        # … and the passage opens the original document at its page, in a new tab.
        document_url = f"{self.url}/console/documents/{self.document.pk}/file/#page=2"
        with context.expect_page() as opened:
            selected.locator(".source__open").click()
        tab = opened.value
        tab.wait_for_load_state()
        assert tab.url == document_url, tab.url
        tab.close()
        served = page.evaluate(
            """async (url) => {
                const r = await fetch(url);
                const bytes = new Uint8Array(await r.arrayBuffer());
                return {status: r.status, type: r.headers.get("content-type"), size: bytes.length,
                        head: String.fromCharCode(...bytes.slice(0, 8))};
            }""",
            document_url.split("#")[0],
        )
        assert served == {"status": 200, "type": "application/pdf", "size": len(HANDBOOK), "head": "%PDF-1.4"}

        # Feedback, priority and tags go through the API.
        answer.locator('.fb[data-rating="up"]').click()
        expect(answer.locator('.fb[data-rating="up"]')).to_have_attribute("aria-pressed", "true")
        page.select_option("#chat-priority", "urgent")
        current = page.locator(f'#conversation-list [data-conversation="{conversation_id}"]')
        expect(current.locator(".badge--prio-urgent")).to_be_visible()
        page.fill("#tag-input", "warranty")
        page.locator("#tag-input").press("Enter")
        expect(page.locator("#tags-list .tag")).to_have_text(["warranty×"])

        # A question the knowledge base does not cover: the conversation needs a human.
        page.fill("#question", UNRELATED_QUESTION)
        page.locator("#question").press("Enter")
        expect(page.locator("#needs-human-banner")).to_be_visible()
        expect(page.locator("#chat-needs-human")).to_be_visible()
        expect(current.locator(".badge--alert")).to_be_visible()

        # An error event is shown plainly.
        page.evaluate('window.__sockets[window.__sockets.length - 1].send(JSON.stringify({type: "nonsense"}))')
        expect(page.locator("#error-banner")).to_be_visible()
        expect(page.locator("#error-text")).to_contain_text("invalid_event")
        page.click("#error-dismiss")

        # The socket drops: the console says so and reconnects by itself.
        sockets = page.evaluate("window.__sockets.length")
        page.evaluate("window.__sockets[window.__sockets.length - 1].close(3001)")
        expect(page.locator("#conn-status")).to_have_attribute("data-state", "waiting")
        expect(page.locator("#conn-status")).to_have_attribute("data-state", "open")
        assert page.evaluate("window.__sockets.length") == sockets + 1

        # Close and reopen.
        page.click("#chat-close")
        expect(page.locator("#chat-status")).to_have_text("已关闭")
        expect(page.locator("#question")).to_be_disabled()
        page.click("#chat-reopen")
        expect(page.locator("#question")).to_be_enabled()

        # A second conversation; new messages in the first (asked over the REST API from
        # this page) show as an unread dot once the list refreshes.
        page.click("#new-conversation")
        expect(page.locator("#conversation-list .conv.is-current")).not_to_have_attribute(
            "data-conversation", conversation_id
        )
        status = page.evaluate(
            """async (id) => {
                const token = document.cookie.match(/csrftoken=([^;]+)/)[1];
                const r = await fetch(`/api/v1/conversations/${id}/messages`, {method: "POST",
                  headers: {"Content-Type": "application/json", "X-CSRFToken": token},
                  body: JSON.stringify({content: "Are batteries covered too?"})});
                return r.status;
            }""",
            conversation_id,
        )
        assert status == 200
        page.select_option("#filter-priority", "urgent")  # any filter change reloads the list
        expect(current).to_have_class(re.compile(r"\bis-unread\b"))
        page.select_option("#filter-priority", "")

        # Ctrl+K searches conversations.
        page.locator("body").press("Control+k")
        expect(page.locator("#filter-search")).to_be_focused()
        page.keyboard.type("Nimbus Z7")
        expect(page.locator("#conversation-list .conv")).to_have_count(1)
        page.keyboard.press("Escape")

        # The language switch: English, and back.
        page.locator(f'#conversation-list [data-conversation="{conversation_id}"]').click()
        expect(page.locator("#conn-status")).to_have_attribute("data-state", "open")
        page.click('.lang-switch button[value="en"]')
        expect(page.locator("#sources-title")).to_have_text("Sources")
        expect(page).to_have_url(f"{self.url}/console/#{conversation_id}")  # back in the same conversation
        expect(page.locator(".msg--assistant").first).to_contain_text(ANSWER_FACT)
        expect(page.locator("#conn-status")).to_have_attribute("data-state", "open")
        expect(page.locator("#conn-status")).to_contain_text("Live")
        self.shot(page, "3-english")
        page.click('.lang-switch button[value="zh-hans"]')
        expect(page.locator("#sources-title")).to_have_text("引用来源")

        page.click("#logout")
        expect(page).to_have_url(self.url + "/console/login/")
        page.goto(self.url + "/console/")
        expect(page).to_have_url(self.url + "/console/login/?next=/console/")
        return observed

    def _check_database(self, observed: dict) -> None:
        """What the browser did is what the database holds (after the browser closed: the
        ORM is not used while Playwright's event loop runs in this thread)."""
        from django_tenants.utils import schema_context

        from apps.chat.models import Conversation, MessageFeedback, MessageSource

        with schema_context("acme"):
            conversation = Conversation.objects.get(pk=observed["conversation_id"])
            assert conversation.priority == "urgent"
            assert conversation.tags == ["warranty"]
            assert conversation.needs_human is True
            assert conversation.status == "active"
            assert conversation.created_by_id == self.agent.pk
            answer = conversation.messages.filter(role="assistant").order_by("created_at").first()
            assert ANSWER_FACT in answer.content
            source = MessageSource.objects.get(message=answer, metadata__number=1)
            assert source.document_id == self.document.pk
            assert source.metadata["page"] == 2
            assert MessageFeedback.objects.get(message=answer).rating == "up"
        print(json.dumps({"screenshots": str(self.tmp_path), **observed}))
