"""How long does a person wait for an answer over the chat websocket?

Prints, never asserts, the time from sending a question on ``ws/chat/<id>/`` to the first
``answer.delta`` (first token) and to ``answer.completed``, for 1, 10 and 50 conversations
asking at the same moment, measured by real websocket clients against a real daphne server
(``config.asgi:application``) on a free port:

1. the extractive provider (no model): target p95 first token <= 300 ms at 10 concurrent;
2. the openai provider against an OpenAI-compatible streaming server that this script
   starts (first token after ``--llm-first-token`` ms, then a piece every ``--llm-gap`` ms):
   the overhead Zhida adds on top of that server's own first token, target <= 50 ms. The
   server and the clients share this process's clock, so each answer is split into
   "before the model" (question stored, retrieval, prompt) and "relay" (the model's first
   piece through the provider client, the citation guard, the channel layer and the socket).

    .venv/bin/python bench/chat_latency.py                   # the figures in bench/README.md
    .venv/bin/python bench/chat_latency.py --rounds 2        # quicker
    .venv/bin/python bench/chat_latency.py --asgi-threads 64 # daphne's thread pool (ASGI_THREADS)
    .venv/bin/python bench/chat_latency.py --no-sentence-cache  # extractive answers embed every sentence
    .venv/bin/python bench/chat_latency.py --cleanup         # remove the tenants of a killed run

It works on the dev database (DJANGO_SETTINGS_MODULE=config.settings.local, database
``zhida``) in a throw-away tenant ``bench_chat_<random>`` (domain
``bench-chat-<random>.localhost``) made with ``tenant_create``, with a few Markdown documents
ingested in this process, an API key (role agent) that the clients send as ``x-api-key``,
and its own Milvus Lite server (``apps.core.testing.start_milvus``, MILVUS_URI for daphne).
The search cache of the tenant is emptied before every round, so retrieval runs every time.
At the end daphne, the model server and Milvus are stopped and the tenant is dropped (also
on Ctrl-C or an error). Clients use the ``websockets`` package (requirements-dev.txt).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PREFIX = "bench_chat_"
FIRST_TOKEN_TARGET_MS = 300.0  # p95 at 10 concurrent, extractive
OVERHEAD_TARGET_MS = 50.0  # on top of the model server's own first token

DOCUMENTS = {
    "printer-warranty.md": (
        "# Vellum printer warranty\n\n"
        "Every Vellum printer comes with a two-year limited warranty from the date of purchase. "
        "The warranty covers defects in materials and workmanship under normal use. "
        "Damage caused by liquids, drops or unofficial repairs is not covered.\n\n"
        "## Claims\n\n"
        "To make a warranty claim, email support@vellum.example with the serial number and the proof "
        "of purchase. A replacement printer is shipped within three business days of an approved claim.\n"
    ),
    "shipping.md": (
        "# Shipping and delivery\n\n"
        "Orders placed before 3 pm ship the same business day. Standard delivery takes two to four "
        "business days; express delivery arrives the next business day. Shipping is free for orders "
        "above 50 euros. Tracking numbers are sent by email as soon as the parcel leaves the warehouse.\n"
    ),
    "returns.md": (
        "# Returns and refunds\n\n"
        "Unused products can be returned within thirty days of delivery. Refunds are issued to the "
        "original payment method within five business days after the return arrives at our warehouse. "
        "Return shipping is free for defective products.\n"
    ),
    "会员退款.md": (
        "# 星河云盘会员退款政策\n\n"
        "星河云盘会员在购买后七天内可以申请全额退款。退款将在三个工作日内原路退回到您的支付账户。"
        "年度会员超过七天后不支持退款，但可以随时在设置页面关闭自动续费。\n"
    ),
    "存储空间.md": (
        "# 星河云盘存储空间\n\n"
        "普通会员提供两太字节的存储空间，超级会员提供十太字节的存储空间。"
        "会员到期后，超出免费额度的文件会保留九十天，之后将被清理。单个文件最大可上传二十吉字节。\n"
    ),
    "账号安全.md": (
        "# 账号安全\n\n"
        "登录时可以开启两步验证，验证码通过短信或身份验证器应用发送。"
        "连续输错密码五次后，账号会被锁定三十分钟。修改绑定手机号需要验证原手机号。\n"
    ),
}
QUESTIONS = [
    "How long is the warranty on a Vellum printer?",
    "Is water damage covered by the printer warranty?",
    "How do I make a warranty claim?",
    "When will my order ship?",
    "Is shipping free?",
    "How long do refunds take after a return?",
    "星河云盘会员可以退款吗？",
    "退款多久到账？",
    "超级会员有多少存储空间？",
    "会员到期后文件会怎样？",
    "怎么开启两步验证？",
    "密码输错几次会锁定账号？",
]


# --- measuring ------------------------------------------------------------------------------------


@dataclass
class Sample:
    first_ms: float | None = None
    done_ms: float | None = None
    error: str | None = None
    deltas: int = 0
    # openai runs: this process's perf_counter at send, server got the request, server sent its first piece
    sent: float = 0.0
    model_request: float | None = None
    model_first: float | None = None
    first_at: float | None = None
    conversation: str = ""


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))]


def summary(values: list[float]) -> str:
    if not values:
        return "-"
    return (
        f"p50 {pct(values, 50):7.1f}  p95 {pct(values, 95):7.1f}  max {max(values):7.1f}  "
        f"mean {statistics.fmean(values):7.1f}"
    )


# --- the model server -------------------------------------------------------------------------------


@dataclass
class ModelServer:
    """An OpenAI-compatible ``/v1/chat/completions`` that streams a fixed answer: first piece
    after ``first_token`` s, the others ``gap`` s apart. Records, per question tag, when the
    request arrived and when the first piece left (this process's perf_counter)."""

    first_token: float
    gap: float
    pieces: int
    url: str = ""
    seen: dict[str, tuple[float, float]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    httpd: ThreadingHTTPServer | None = None

    def start(self) -> ModelServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format, *args):
                pass

            def handle(self) -> None:
                with contextlib.suppress(ConnectionError):  # a client closing its kept-alive connection
                    super().handle()

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                arrived = time.perf_counter()
                match = re.search(r"\[q(\d+)\]", body["messages"][-1]["content"])
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                time.sleep(server.first_token)
                words = ["The ", "answer ", "is ", "in ", "the ", "documents "]
                with contextlib.suppress(OSError):
                    for i in range(server.pieces):
                        text = words[i % len(words)] + ("[1]. " if i % 10 == 9 else "")
                        self._event({"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]})
                        if i == 0 and match:
                            with server.lock:
                                server.seen[match[1]] = (arrived, time.perf_counter())
                        time.sleep(server.gap)
                    self._event({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
                    self._chunk(b"data: [DONE]\n\n")
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()

            def _event(self, payload: dict) -> None:
                self._chunk(f"data: {json.dumps(payload)}\n\n".encode())

            def _chunk(self, raw: bytes) -> None:
                self.wfile.write(f"{len(raw):x}\r\n".encode() + raw + b"\r\n")
                self.wfile.flush()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        return self

    def stop(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()

    def own_first_token_ms(self, count: int) -> list[float]:
        """The server's first token as a direct streaming client sees it (no Zhida)."""
        import requests

        out = []
        for _ in range(count):
            started = time.perf_counter()
            with requests.post(
                f"{self.url}/v1/chat/completions",
                json={"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]},
                stream=True,
                timeout=30,
            ) as response:
                for line in response.iter_lines():
                    if line.startswith(b"data: {"):
                        out.append((time.perf_counter() - started) * 1000)
                        break
        return out


# --- websocket clients ------------------------------------------------------------------------------


class Client:
    def __init__(self, host: str, port: int, api_key: str, conversation_id: str):
        self.uri = f"ws://{host}:{port}/ws/chat/{conversation_id}/"
        self.host, self.port, self.api_key = host, port, api_key
        self.ws = None

    async def open(self) -> None:
        from websockets.asyncio.client import connect

        self.ws = await connect(
            self.uri,
            host="127.0.0.1",  # the tenant's name is only in the Host header
            port=self.port,
            origin=f"http://{self.host}:{self.port}",
            additional_headers={"x-api-key": self.api_key},
            open_timeout=60,
            max_size=None,
            ping_interval=None,
        )

    async def ask(self, question: str, start: asyncio.Event) -> Sample:
        from websockets.exceptions import ConnectionClosed

        await start.wait()
        sample = Sample(sent=time.perf_counter(), conversation=self.uri.rstrip("/").rsplit("/", 1)[1])
        await self.ws.send(json.dumps({"type": "question", "content": question}))
        try:
            while True:
                event = json.loads(await asyncio.wait_for(self.ws.recv(), timeout=120))
                now = time.perf_counter()
                if event["type"] == "answer.delta":
                    sample.deltas += 1
                    if sample.first_ms is None:
                        sample.first_at = now
                        sample.first_ms = (now - sample.sent) * 1000
                elif event["type"] == "answer.completed":
                    sample.done_ms = (now - sample.sent) * 1000
                    return sample
                elif event["type"] == "error":
                    sample.error = event.get("code")
                    return sample
        except (TimeoutError, OSError, ConnectionClosed) as exc:
            sample.error = type(exc).__name__
            return sample

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()


def failed(error: BaseException) -> asyncio.Future:
    future = asyncio.get_running_loop().create_future()
    future.set_result(Sample(error=f"connect: {type(error).__name__}"))
    return future


async def run_round(host, port, api_key, conversations: list[str], questions: list[str]) -> list[Sample]:
    clients = [Client(host, port, api_key, cid) for cid in conversations]
    # Connecting is not timed, and not all at once: 50 handshakes in the same instant queue on
    # the one thread that does the websocket middleware's database calls, past daphne's
    # 5 s handshake timeout (see bench/README.md).
    gate = asyncio.Semaphore(10)

    async def open_one(client: Client) -> None:
        async with gate:
            await client.open()

    opened = await asyncio.gather(*(open_one(c) for c in clients), return_exceptions=True)
    start = asyncio.Event()
    try:
        tasks = [
            asyncio.ensure_future(c.ask(q, start)) if not isinstance(o, BaseException) else failed(o)
            for c, q, o in zip(clients, questions, opened, strict=True)
        ]
        await asyncio.sleep(0.05)
        start.set()  # every client sends at the same moment
        return await asyncio.gather(*tasks)
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


# --- daphne -----------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def daphne(workdir: Path, host: str, env_extra: dict[str, str], args) -> Iterator[tuple[int, Path]]:
    """daphne serving config.asgi:application on a free port until the block ends: (port, log)."""
    import requests

    from apps.core.testing import stop_process

    port = free_port()
    log = workdir / f"daphne-{port}.log"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.local",
        "DJANGO_DEBUG": "False",
        "LOG_LEVEL": "WARNING",
        **env_extra,
    }
    if args.asgi_threads:
        env["ASGI_THREADS"] = str(args.asgi_threads)
    if args.no_sentence_cache:
        env["CHAT_SENTENCE_CACHE_PASSAGES"] = "0"
    with log.open("wb") as out:
        # As scripts/run.sh and the Dockerfile run it: config.web, N daphne processes on one port.
        process = subprocess.Popen(
            [sys.executable, "-m", "config.web", "--bind", "127.0.0.1", "--port", str(port)]
            + ["--processes", str(args.web_processes), "--", "-v", "0"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"daphne exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            with contextlib.suppress(requests.RequestException):
                requests.get(f"http://127.0.0.1:{port}/api/v1/conversations", headers={"Host": host}, timeout=2)
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"daphne did not answer within 120 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield port, log
    except BaseException:
        print(f"daphne's log (tail):\n{log.read_text(errors='replace')[-4000:]}", file=sys.stderr)
        raise
    finally:
        stop_process(process, timeout=20)


# --- tenant, documents, conversations --------------------------------------------------------------


def tenant_new(created: list[str]) -> str:
    from django_tenants.utils import schema_exists

    from apps.tenancy.services import tenant_create

    while True:
        schema = f"{PREFIX}{secrets.token_hex(4)}"
        if not schema_exists(schema):
            break
    created.append(schema)  # before creating: cleanup must see it even if this run dies now
    tenant_create(name=f"Bench chat {schema}", schema_name=schema)
    return schema


def knowledge_ingest(schema: str) -> int:
    from django.core.files.base import ContentFile
    from django_tenants.utils import schema_context

    from apps.knowledge.services import document_process, document_upload

    # The task document_upload sends after commit must not reach the dev broker: processed here.
    with schema_context(schema), mock.patch("apps.knowledge.services._enqueue_on_commit"):
        for name, text in DOCUMENTS.items():
            result = document_upload(actor=None, file=ContentFile(text.encode(), name=name), original_name=name)
            document = document_process(document_id=result.document.pk)
            if document is None or document.status != "indexed":
                raise RuntimeError(f"{name} was not indexed: {getattr(document, 'error_message', '?')}")
    return len(DOCUMENTS)


def api_key_new(schema: str) -> str:
    from django_tenants.utils import schema_context

    from apps.accounts.services import api_key_create

    with schema_context(schema):
        return api_key_create(name="bench-chat", roles=["agent"], actor=None).key


def conversations_new(schema: str, count: int) -> list[str]:
    from django_tenants.utils import schema_context

    from apps.chat.services import conversation_create

    with schema_context(schema):
        return [str(conversation_create(actor=None, title=f"bench {i}").pk) for i in range(count)]


def search_cache_clear(schema: str) -> None:
    from django_tenants.utils import schema_context

    from apps.knowledge.search import knowledge_version_bump

    with schema_context(schema):
        knowledge_version_bump()


def cleanup(schemas: list[str]) -> None:
    """Drop the schemas and delete every public row written for them: the tenant (cascading
    to its domain, subscription and usage records) and its platform audit rows."""
    from bench._tenants import tenants_drop

    tenants_drop(schemas)


def leftovers() -> list[str]:
    from bench._tenants import tenant_leftovers

    return tenant_leftovers(PREFIX)


# --- the runs ---------------------------------------------------------------------------------------


def measure(schema: str, host: str, port: int, api_key: str, concurrency: int, rounds: int, tag: bool) -> list[Sample]:
    samples: list[Sample] = []
    for round_number in range(rounds):
        search_cache_clear(schema)
        conversations = conversations_new(schema, concurrency)
        offset = round_number * concurrency
        questions = [QUESTIONS[(offset + i) % len(QUESTIONS)] for i in range(concurrency)]
        if tag:  # the model server finds each answer's question by this tag
            questions = [f"{q} [q{offset + i}]" for i, q in enumerate(questions)]
        samples += asyncio.run(run_round(host, port, api_key, conversations, questions))
    return samples


def log_tail_if_failed(samples: list[Sample], log: Path) -> None:
    if any(s.error for s in samples):
        print(f"  daphne's log (tail):\n{log.read_text(errors='replace')[-4000:]}")


def server_timings(schema: str, samples: list[Sample]) -> dict[str, list[float]]:
    """What the answers' own metadata say (measured inside conversation_ask), next to what
    the clients saw: the rest is the wait for a worker thread and the relay to the socket."""
    from django_tenants.utils import schema_context

    from apps.chat.models import Message

    by_conversation = {s.conversation: s for s in samples if s.error is None and s.first_ms is not None}
    out: dict[str, list[float]] = {"retrieval": [], "to first piece": [], "outside": []}
    with schema_context(schema):
        rows = Message.objects.filter(role="assistant", conversation_id__in=list(by_conversation)).values_list(
            "conversation_id", "metadata"
        )
        for conversation_id, metadata in rows:
            latency = metadata.get("latency") or {}
            if latency.get("first_token_ms") is None:
                continue
            out["retrieval"].append(latency["retrieval_ms"])
            out["to first piece"].append(latency["first_token_ms"])
            out["outside"].append(by_conversation[str(conversation_id)].first_ms - latency["first_token_ms"])
    return out


def report(label: str, samples: list[Sample], schema: str | None = None) -> None:
    ok = [s for s in samples if s.error is None]
    errors: dict[str, int] = {}
    for s in samples:
        if s.error:
            errors[s.error] = errors.get(s.error, 0) + 1
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\n{label}: {len(samples)} answers, {len(samples) - len(ok)} failed {errors or ''}  (load {load})")
    print(f"  first answer.delta (ms)   {summary([s.first_ms for s in ok if s.first_ms is not None])}")
    print(f"  answer.completed (ms)     {summary([s.done_ms for s in ok if s.done_ms is not None])}")
    if ok:
        print(f"  deltas per answer         {statistics.fmean(s.deltas for s in ok):.1f}")
    if schema is not None:
        timings = server_timings(schema, samples)
        print(f"  server: retrieval         {summary(timings['retrieval'])}")
        print(f"  server: to 1st piece      {summary(timings['to first piece'])}   (from conversation_ask start)")
        print(
            f"  client minus server       {summary(timings['outside'])}   (worker-thread wait, channel layer, socket)"
        )


def report_overhead(label: str, samples: list[Sample], model: ModelServer) -> dict[str, float]:
    own, before, relay, total = [], [], [], []
    for index, sample in enumerate(samples):
        seen = model.seen.get(str(index))
        if sample.error or seen is None or sample.first_at is None:
            continue
        arrived, first_sent = seen
        own.append((first_sent - arrived) * 1000)
        before.append((arrived - sample.sent) * 1000)
        relay.append((sample.first_at - first_sent) * 1000)
        total.append(sample.first_ms - (first_sent - arrived) * 1000)
    print(f"  model's own first token   {summary(own)}")
    print(f"  overhead, in all          {summary(total)}   (first answer.delta minus the model's own)")
    print(f"    before the model        {summary(before)}   (store question, retrieval, prompt)")
    print(f"    relay of the 1st piece  {summary(relay)}   (provider client, guard, channel layer, socket)")
    return {"p95": pct(total, 95) if total else float("nan"), "p50": pct(total, 50) if total else float("nan")}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--rounds", type=int, default=0, help="rounds per level (default: 50 / 5 / 2 for 1 / 10 / 50)")
    parser.add_argument("--llm-first-token", type=float, default=200.0, help="model server's first token, ms")
    parser.add_argument("--llm-gap", type=float, default=15.0, help="ms between the model server's pieces")
    parser.add_argument("--llm-pieces", type=int, default=30)
    parser.add_argument("--asgi-threads", type=int, default=0, help="ASGI_THREADS for daphne (default: unset)")
    parser.add_argument(
        "--no-sentence-cache",
        action="store_true",
        help="CHAT_SENTENCE_CACHE_PASSAGES=0 for daphne: every extractive answer embeds its passages' sentences",
    )
    parser.add_argument(
        "--web-processes",
        type=int,
        default=None,
        help="daphne processes behind the port (config.web; default: as in production, WEB_CONCURRENCY or CPUs)",
    )
    parser.add_argument("--skip-openai", action="store_true")
    parser.add_argument("--skip-extractive", action="store_true")
    parser.add_argument("--cleanup", action="store_true", help="only remove leftovers of a killed run")
    return parser.parse_args()


def rounds_for(concurrency: int, args) -> int:
    if args.rounds:
        return args.rounds
    return max(2, 50 // concurrency)


def main() -> int:
    args = parse_args()
    if args.web_processes is None:
        from config.web import default_processes

        args.web_processes = default_processes()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")
    os.environ.setdefault("DJANGO_DEBUG", "False")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workdir = Path(tempfile.mkdtemp(prefix="bench-chat-"))
    os.environ["MEDIA_ROOT"] = str(workdir / "media")  # this process and daphne
    import django

    django.setup()
    from django.conf import settings
    from django.db import connection

    db = settings.DATABASES["default"]
    print(f"database {db['NAME']} on {db.get('HOST') or 'localhost'}:{db.get('PORT') or 5432}")
    if args.cleanup:
        found = leftovers()
        cleanup(found)
        shutil.rmtree(workdir, ignore_errors=True)
        print(f"removed {len(found)} bench tenant schema(s): {found}")
        return 0

    from pymilvus.client.connection_manager import ConnectionManager

    from apps.core.testing import start_milvus
    from apps.knowledge import vectorstore
    from apps.tenancy.models import Domain

    created: list[str] = []
    milvus = model = None
    try:
        try:
            milvus = start_milvus(workdir)
        except BaseException as exc:  # start_milvus reports with pytest.fail
            raise RuntimeError(f"Milvus Lite did not start: {exc}") from None
        settings.MILVUS_URI = os.environ["MILVUS_URI"] = milvus.url
        vectorstore.client_reset()
        ConnectionManager._reset_instance()
        schema = tenant_new(created)
        host = Domain.objects.get(tenant__schema_name=schema).domain
        started = time.perf_counter()
        count = knowledge_ingest(schema)
        api_key = api_key_new(schema)
        print(
            f"tenant {schema} ({host}): {count} documents ingested in {time.perf_counter() - started:.1f} s; "
            f"Milvus Lite {milvus.url}; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; "
            f"{args.web_processes} daphne process(es); ASGI_THREADS={args.asgi_threads or 'unset'}; "
            f"sentence cache {'off' if args.no_sentence_cache else 'on'}"
        )

        results: dict[int, list[Sample]] = {}
        if not args.skip_extractive:
            print("\n== extractive provider ==")
            env = {"MILVUS_URI": milvus.url, "CHAT_PROVIDER": "extractive"}
            with daphne(workdir, host, env, args) as (port, log):
                log_tail_if_failed(measure(schema, host, port, api_key, 1, 1, tag=False), log)  # warm-up
                for concurrency in args.concurrency:
                    results[concurrency] = measure(
                        schema, host, port, api_key, concurrency, rounds_for(concurrency, args), tag=False
                    )
                    report(f"{concurrency} concurrent", results[concurrency], schema)
                    log_tail_if_failed(results[concurrency], log)

        overheads: dict[int, dict[str, float]] = {}
        if not args.skip_openai:
            model = ModelServer(args.llm_first_token / 1000, args.llm_gap / 1000, args.llm_pieces).start()
            own = model.own_first_token_ms(10)
            print(
                f"\n== openai provider, model server {model.url}: first token {args.llm_first_token:.0f} ms, "
                f"then {args.llm_pieces} pieces {args.llm_gap:.0f} ms apart =="
            )
            print(f"model server's first token to a direct client (ms): {summary(own)}")
            env = {
                "MILVUS_URI": milvus.url,
                "CHAT_PROVIDER": "openai",
                "OPENAI_CHAT_BASE_URL": model.url,
                "OPENAI_CHAT_MODEL": "bench",
                "CHAT_MAX_RETRIES": "0",
            }
            with daphne(workdir, host, env, args) as (port, log):
                log_tail_if_failed(measure(schema, host, port, api_key, 1, 1, tag=True), log)  # warm-up
                for concurrency in args.concurrency:
                    model.seen.clear()
                    samples = measure(schema, host, port, api_key, concurrency, rounds_for(concurrency, args), tag=True)
                    report(f"{concurrency} concurrent", samples)
                    log_tail_if_failed(samples, log)
                    overheads[concurrency] = report_overhead(f"{concurrency} concurrent", samples, model)

        print("\n== against the targets ==")
        if 10 in results:
            firsts = [s.first_ms for s in results[10] if s.first_ms is not None]
            if firsts:
                p95 = pct(firsts, 95)
                verdict = "met" if p95 <= FIRST_TOKEN_TARGET_MS else "NOT met"
                print(f"extractive, 10 concurrent: p95 first token {p95:.0f} ms (target <= 300 ms): {verdict}")
        for concurrency, figures in overheads.items():
            verdict = "met" if figures["p95"] <= OVERHEAD_TARGET_MS else "NOT met"
            print(
                f"openai, {concurrency} concurrent: overhead p50 {figures['p50']:.0f} ms, p95 {figures['p95']:.0f} ms "
                f"(target <= 50 ms): {verdict}"
            )
    finally:
        print(f"\ncleaning up: tenant(s) {created}, daphne, model server, Milvus, {workdir}", file=sys.stderr)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            connection.close()
            cleanup(created)
        finally:
            if model is not None:
                model.stop()
            if milvus is not None:
                milvus.stop()
            vectorstore.client_reset()
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
