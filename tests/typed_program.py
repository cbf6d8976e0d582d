"""A typed user program: every public class of shmlink, as a user would write it.

``tests/test_typing.py`` checks it with ``mypy --strict`` and ``pyright`` (so
``with X.create_or_open(...) as x`` must type ``x`` as ``X``, and the string
options must be ``Literal`` types), and also runs it: it is a real program.

    python tests/typed_program.py [PREFIX]
"""

from __future__ import annotations

import os
import sys
import threading
from typing import TYPE_CHECKING, Any

import shmlink

if TYPE_CHECKING:
    if sys.version_info >= (3, 11):
        from typing import assert_type
    else:  # the checkers know typing_extensions without it being installed
        from typing_extensions import assert_type
else:
    def assert_type(value: Any, _type: Any) -> Any:
        return value


def segments(prefix: str) -> None:
    with shmlink.Segment.create_or_open(prefix + "seg", 64, lifetime="auto") as seg:
        assert_type(seg, shmlink.Segment)
        seg.write_text("hello", encoding="utf-16-le")
        text: str = seg.read_text("utf-16-le")
        assert text == "hello"
        with seg.view(0, 4) as v:
            assert_type(v, memoryview)
        size: int = seg.size
        mode: int = seg.mode
        lifetime: shmlink.Lifetime = seg.lifetime
        assert (size, mode, lifetime) == (64, 0o600, "auto")
        info: shmlink.SegmentInfo = shmlink.info(seg.name)
        assert info.kind == "segment"


def sync(prefix: str) -> None:
    with shmlink.Mutex.create_or_open(prefix + "mutex", lifetime="auto") as m:
        assert_type(m, shmlink.Mutex)  # __enter__ acquires and returns the mutex
        holder: int | None = m.holder_pid
        assert holder == os.getpid()
    ev = shmlink.Event.create_or_open(prefix + "event", auto_reset=True, lifetime="auto")
    with ev:
        assert_type(ev, shmlink.Event)
        ev.set()
        ok: bool = ev.wait(timeout=1.0)
        stats: dict[str, Any] = ev.stats()
        assert ok and stats["set_count"] == 1


def queues(prefix: str) -> None:
    with shmlink.Queue.create_or_open(prefix + "queue", capacity=4096, wait="block",
                                      lifetime="auto") as q:
        assert_type(q, shmlink.Queue)
        wait: shmlink.WaitMode = q.wait
        q.wait = "spin"
        q.send(b"one", timeout=1.0)
        q.send_text("two")
        n: int = q.send_many([b"three", b"four"], timeout=1.0)
        assert n == 2
        first: bytes = q.recv(timeout=1.0)
        maybe: bytes | None = q.try_recv()
        with q.recv_view(timeout=1.0) as view:
            assert_type(view, memoryview)
            third = bytes(view)
        batch: list[bytes] = q.recv_many(8, timeout=1.0)
        mv: shmlink.MessageView
        assert (first, maybe, third, batch, wait) == (b"one", b"two", b"three", [b"four"], "block")
        cap: int = q.stats()["capacity"]
        assert cap == q.capacity == 4096


def topics(prefix: str) -> None:
    with shmlink.Topic.create_or_open(prefix + "topic", 4096, delivery="latest",
                                      lifetime="auto") as topic:
        assert_type(topic, shmlink.Topic)
        delivery: shmlink.Delivery = topic.delivery
        start: shmlink.Start = "oldest"
        with topic.subscribe(start) as sub:
            assert_type(sub, shmlink.Subscriber)
            topic.publish(b"a")
            topic.publish_many([b"b", b"c"])
            got: bytes = sub.recv(timeout=1.0)
            with sub.recv_view(timeout=1.0) as view:
                assert_type(view, memoryview)
                second = bytes(view)
            seen: list[bytes] = []
            done = threading.Event()

            def on(message: bytes) -> None:
                seen.append(message)
                done.set()

            with sub.on_message(on) as handler:
                assert_type(handler, shmlink.topic.MessageHandler)
                done.wait(5)
            missed: int = sub.missed
            assert (delivery, got, second, seen, missed) == ("latest", b"a", b"b", [b"c"], 0)


def boards(prefix: str) -> None:
    with shmlink.Board.create_or_open(prefix + "board", 256, lifetime="auto") as board:
        assert_type(board, shmlink.Board)
        version: int = board.write_object({"x": 1})
        value: Any = board.read_object()
        v2, raw = board.read_versioned()
        changed: int = board.wait_for_change(0, timeout=1.0)
        capacity: int = board.capacity
        assert (version, value, v2, changed, capacity) == (1, {"x": 1}, 1, 1, 256)
        assert isinstance(raw, bytes)


def connections(prefix: str) -> None:
    with shmlink.listen(prefix + "calc") as listener:
        assert_type(listener, shmlink.Listener)

        def serve() -> None:
            with listener.accept(timeout=10) as conn:
                conn.serve(lambda request: request.upper())

        server = threading.Thread(target=serve)
        server.start()
        with shmlink.connect(prefix + "calc", timeout=10) as conn:
            assert_type(conn, shmlink.Connection)
            answer: bytes = conn.request(b"ping", timeout=10)
            assert answer == b"PING"
        server.join(10)


def errors(prefix: str) -> None:
    try:
        shmlink.Queue.open(prefix + "missing", timeout=0)
    except shmlink.SegmentNotFound as e:
        assert isinstance(e, shmlink.ShmlinkError)
    with shmlink.Queue.create(prefix + "mismatch", 4096, lifetime="auto") as q:
        try:
            shmlink.Queue.create_or_open(q.name, 8192)
        except shmlink.SettingsMismatch as e:
            assert "capacity 4096, not 8192" in str(e)
        else:
            raise AssertionError("no SettingsMismatch")


def main(prefix: str) -> int:
    for part in (segments, sync, queues, topics, boards, connections, errors):
        part(prefix)
    print("typed program: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else f"typed-{os.getpid()}-"))
