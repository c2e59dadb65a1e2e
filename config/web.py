"""Run the ASGI app (HTTP and websockets) in several daphne processes on one port.

    python -m config.web --bind 0.0.0.0 --port 8000          # WEB_CONCURRENCY processes
    python -m config.web --processes 1                        # a single daphne, as before

One daphne process runs every request and every answer under one GIL: ten agents asking at
once queue behind each other's Python work (bench/README.md, "chat latency"). This starts
``--processes`` daphne processes (default ``WEB_CONCURRENCY``, else the number of CPUs, at
most 8). Each gets a listening socket of its own, bound to the same address with
``SO_REUSEPORT``, so the kernel spreads new connections over them; where that option does
not exist, they share one socket. Daphne takes the socket with ``--fd``, its documented way
of running under a process manager. Websocket groups already go through Redis
(channels-redis), so a conversation's events reach every tab whichever process holds it.

The launcher stays in the foreground: SIGTERM or SIGINT stops every child (daphne closes its
connections), and if one child dies the others are stopped and the launcher exits with that
child's code, so the container or systemd restarts the whole web role rather than running
short of a process. Every process also holds ``CHAT_ANSWER_THREADS`` answer threads, each
with a database connection while it answers: mind PostgreSQL's ``max_connections``.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

MAX_DEFAULT_PROCESSES = 8


def default_processes() -> int:
    value = os.environ.get("WEB_CONCURRENCY", "").strip()
    if value:
        return max(1, int(value))
    return max(1, min(os.cpu_count() or 1, MAX_DEFAULT_PROCESSES))


def listening_sockets(*, host: str, port: int, count: int) -> list[socket.socket]:
    """``count`` sockets listening on host:port (SO_REUSEPORT), or one shared socket."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    reuse_port = hasattr(socket, "SO_REUSEPORT") and count > 1
    sockets: list[socket.socket] = []
    try:
        for _ in range(count if reuse_port else 1):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            sock.listen(1024)
            sock.set_inheritable(True)
            sockets.append(sock)
            port = sock.getsockname()[1]  # port 0: every socket on the port the first one got
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def daphne_command(*, fd: int, application: str, extra: list[str]) -> list[str]:
    daphne = Path(sys.executable).with_name("daphne")
    program = [str(daphne)] if daphne.exists() else [sys.executable, "-m", "daphne"]
    return [*program, "--fd", str(fd), *extra, application]


def serve(*, host: str, port: int, processes: int, application: str, extra: list[str]) -> int:
    sockets = listening_sockets(host=host, port=port, count=processes)
    bound = sockets[0].getsockname()[1]
    children: list[subprocess.Popen] = []
    stopping = False

    def stop(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        for number in range(processes):
            sock = sockets[number % len(sockets)]
            children.append(
                subprocess.Popen(
                    daphne_command(fd=sock.fileno(), application=application, extra=extra),
                    pass_fds=(sock.fileno(),),
                )
            )
        print(
            f"web: {processes} daphne process(es) on {host}:{bound} "
            f"({'SO_REUSEPORT' if len(sockets) > 1 else 'one shared socket'}), pids "
            + " ".join(str(c.pid) for c in children),
            flush=True,
        )
        code = 0
        while not stopping:
            for child in children:
                if child.poll() is not None:
                    code = child.returncode or 1
                    print(f"web: daphne {child.pid} exited with {child.returncode}; stopping", flush=True)
                    stopping = True
                    break
            else:
                time.sleep(0.2)
        return code
    finally:
        for sock in sockets:
            sock.close()
        for child in children:
            if child.poll() is None:
                child.terminate()
        deadline = time.monotonic() + 15
        for child in children:
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bind", "-b", default=os.environ.get("WEB_BIND", "127.0.0.1"))
    parser.add_argument("--port", "-p", type=int, default=int(os.environ.get("PORT", "8000")))
    parser.add_argument("--processes", type=int, default=None, help="default: WEB_CONCURRENCY, else CPUs (max 8)")
    parser.add_argument("--application", default="config.asgi:application")
    parser.add_argument("daphne_args", nargs="*", help="more daphne options, after --")
    args = parser.parse_args(argv)
    processes = args.processes if args.processes is not None else default_processes()
    if processes < 1:
        parser.error("--processes must be at least 1")
    return serve(
        host=args.bind, port=args.port, processes=processes, application=args.application, extra=args.daphne_args
    )


if __name__ == "__main__":
    sys.exit(main())
