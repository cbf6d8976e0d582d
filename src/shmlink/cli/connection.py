"""``shmlink request | serve``: request/response through a listener's connections."""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import threading
from typing import Any

from ..connection import Connection, connect, listen
from ._common import count_arg, emit_message, size_arg, text_arg, timeout_arg


def cmd_request(a: argparse.Namespace) -> int:
    if a.file is not None:
        with (sys.stdin.buffer if a.file == "-" else open(a.file, "rb")) as f:
            data = f.read()
    elif a.text is None or a.text == "-":
        data = sys.stdin.buffer.read()
    else:
        data = a.text.encode("utf-8")
    with connect(a.listener, timeout=a.timeout) as conn:
        resp = conn.request(data, timeout=a.timeout)
    emit_message(resp, a)
    return 0


def cmd_serve(a: argparse.Namespace) -> int:
    if a.exec:
        def handler(req: bytes) -> bytes:
            return subprocess.run(a.exec, shell=True, input=req, capture_output=True,
                                  check=False).stdout
    else:
        def handler(req: bytes) -> bytes:
            return req

    threads: list[threading.Thread] = []
    conns: list[Connection] = []
    with listen(a.listener, capacity=a.capacity) as lst:
        sys.stderr.write(f"listening on {a.listener!r} (PID {os.getpid()}); Ctrl-C stops\n")
        try:
            for n in itertools.count():
                if a.count is not None and n >= a.count:
                    break
                conn = lst.accept()
                conns.append(conn)

                def run(c: Connection = conn) -> None:
                    with c:
                        c.serve(handler)

                t = threading.Thread(target=run, daemon=True)
                t.start()
                threads.append(t)
            for t in threads:
                t.join()
        finally:
            for c in conns:
                c.close()
    return 0


def add_parsers(sub: Any) -> None:
    """Add ``request`` and ``serve``."""
    p = sub.add_parser("request", help="connect to a listener, send one request, print the response")
    p.add_argument("listener", help="the listener's name")
    p.add_argument("text", nargs="?", type=text_arg,
                   help="the request; '-' or omitted: read stdin")
    p.add_argument("--file", help="send this file's contents ('-' = stdin)")
    p.add_argument("--timeout", type=timeout_arg, default=10.0,
                   help="seconds for connecting and for the response (default 10)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--raw", action="store_true", help="write the response's bytes as they are")
    g.add_argument("--json", action="store_true", help="the response as a JSON object (keys below)")
    p.set_defaults(func=cmd_request)

    p = sub.add_parser("serve",
                       help="listen on a name and answer requests (echo, or a shell command's output)")
    p.add_argument("listener", help="the name to listen on")
    p.add_argument("--exec", metavar="CMD",
                   help="answer each request with the stdout of this shell command, fed the "
                        "request on stdin (default: echo the request)")
    p.add_argument("--count", type=count_arg, default=None,
                   help="serve this many clients, then exit")
    p.add_argument("--capacity", type=size_arg, default=1 << 20,
                   help="bytes per direction per connection (default 1M)")
    p.set_defaults(func=cmd_serve)
