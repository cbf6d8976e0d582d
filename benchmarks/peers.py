"""Point-to-point competitors: one adapter per IPC mechanism, behind one small interface.

A ``Link`` is created in the parent (``create``: make the named resources a case needs and
return one picklable spec per side) and opened in each child (``open``: side ``"a"`` is the
client/sender, side ``"b"`` the server/receiver). The opened ``Endpoint`` has

- ``send(buf)`` / ``recv() -> bytes``: block up to ``OP_TIMEOUT`` then raise ``TimeoutError``;
- ``send_many(list)`` / ``recv_many(max_count) -> list`` where the competitor has a batch form;
- ``recv_view()`` (shmlink only): a context manager yielding a zero-copy ``memoryview``;
- ``copies_on_send``: True when ``send`` has copied the bytes out of ``buf`` by the time it
  returns, so the caller may stamp the next sequence number into the same ``bytearray``.
  When False (``multiprocessing.Queue`` pickles in a feeder thread, later) the caller passes a
  fresh ``bytes`` object instead, outside any timed region in the latency scenario.

How each competitor waits, and how each wait is bounded (see also README.md):

=================  ===========================================================================
shmlink            ``Queue(wait="hybrid"|"block")``; every call takes ``timeout=``.
multiprocessing    ``Queue.put/get(timeout=)``; bounded with ``maxsize`` = capacity // size.
 .Queue
multiprocessing    ``send_bytes/recv_bytes`` on a socketpair; bounded with kernel socket
 .Pipe             timeouts (SO_RCVTIMEO/SO_SNDTIMEO) set once, so no extra poll() per call.
pyzmq PAIR         ``ipc://`` socket; RCVTIMEO/SNDTIMEO; HWM = capacity // size messages.
faster-fifo        ``put/get(timeout=)`` (process-shared mutex + condition variable); raw
                   bytes through its ``loads``/``dumps`` hooks, no pickling.
posix_ipc          ``MessageQueue.send/receive(timeout=)`` (mq_timedsend/mq_timedreceive).
                   The kernel caps it here at 10 messages of <= 8192 bytes (fs.mqueue).
iceoryx2           publish-subscribe over two services; the receiver busy-polls
                   ``Subscriber.receive()`` (os.sched_yield() when empty) with a deadline
                   checked every 1024 polls; the publisher uses back-pressure
                   ``RetryUntilDelivered`` so nothing is lost. Received samples are copied
                   into ``bytes`` (what every other competitor returns).
=================  ===========================================================================
"""
from __future__ import annotations

from functools import partial

import ctypes
import glob
import os
import shutil
import socket
import struct
import time
from typing import Any

from ._harness import CTX, OP_TIMEOUT, PayloadError, Workspace

#: Bytes of buffering every bounded competitor gets for a given message size.
def capacity_for(size: int) -> int:
    return 16 << 20 if size > (64 << 10) else 4 << 20


def messages_for(size: int) -> int:
    """The same buffering expressed in messages, for competitors bounded by count."""
    return max(4, capacity_for(size) // size)


class Link:
    """Base class of the point-to-point adapters. Subclasses are small and picklable."""

    key = ""            # what --only matches (lower case)
    name = ""           # what the tables show
    modes = ("single",)  # throughput modes it supports: single, batch, view

    def unavailable(self) -> str | None:
        """None when usable here, else why not (checked in the parent)."""
        return None

    def limit(self, size: int) -> str | None:
        """None when ``size`` is supported, else why not."""
        return None

    def create(self, ws: Workspace, size: int, duplex: bool) -> tuple[Any, Any, Any]:
        """Make the resources; return (spec for side a, spec for side b, parent state)."""
        raise NotImplementedError

    def create_oneway(self, ws: Workspace, size: int, receivers: int) -> tuple[Any, list, Any]:
        """Resources for one sender and ``receivers`` receivers (point-to-point: exactly 1)."""
        if receivers != 1:
            raise ValueError(f"{self.name} is point-to-point; it has exactly one receiver")
        a, b, state = self.create(ws, size, False)
        return a, [b], state

    def destroy(self, state: Any) -> None:
        """Release what ``create`` made (parent side)."""

    def open(self, spec: Any, side: str) -> "Endpoint":
        raise NotImplementedError


class Endpoint:
    copies_on_send = True

    def close(self) -> None:
        pass


def _missing(mod: str) -> str | None:
    try:
        __import__(mod)
    except ImportError as e:
        return f"{mod} is not installed ({e})"
    return None


# ------------------------------------------------------------------------------- shmlink

def shmlink_queue_missing() -> str | None:
    try:
        import shmlink
    except ImportError as e:
        return f"shmlink is not importable ({e})"
    if not hasattr(shmlink, "Queue"):
        return "shmlink.Queue does not exist yet in this checkout"
    return None


class ShmlinkQueue(Link):
    key = "shmlink"
    modes = ("single", "batch", "view")

    def __init__(self, wait: str = "hybrid") -> None:
        self.wait = wait
        self.name = f"shmlink ({wait})"

    def unavailable(self) -> str | None:
        return shmlink_queue_missing()

    def create(self, ws, size, duplex):
        import shmlink
        held = []
        names = [ws.name("q")] + ([ws.name("q")] if duplex else [])
        for n in names:
            held.append(shmlink.Queue.create(n, capacity=capacity_for(size), wait=self.wait))
        spec = (tuple(names), self.wait)
        return spec, spec, held

    def destroy(self, held):
        for q in held:
            try:
                q.unlink()
            except Exception:
                pass
            q.close()

    def open(self, spec, side):
        names, wait = spec
        return _ShmlinkEndpoint(names, wait, side)


class _ShmlinkEndpoint(Endpoint):
    def __init__(self, names, wait, side):
        import shmlink
        qs = [shmlink.Queue.open(n, wait=wait) for n in names]
        self._qs = qs
        # side a sends on names[0] and receives on names[1]; side b the other way round.
        self.tx = qs[0] if side == "a" else (qs[1] if len(qs) > 1 else None)
        self.rx = (qs[1] if len(qs) > 1 else None) if side == "a" else qs[0]
        tx, rx, t = self.tx, self.rx, OP_TIMEOUT
        if tx is not None:
            self.send = partial(tx.send, timeout=t)
            self.send_many = partial(tx.send_many, timeout=t)
            self.accepts_rows = True  # send_many takes a 2-D array, one message per row
        if rx is not None:
            self.recv = partial(rx.recv, timeout=t)
            self.recv_many = partial(rx.recv_many, timeout=t)
            self.recv_view = partial(rx.recv_view, timeout=t)

    def close(self):
        for q in self._qs:
            q.close()


# ---------------------------------------------------------------------- multiprocessing.Queue

class MpQueue(Link):
    key = "mp-queue"
    name = "multiprocessing.Queue"

    def create(self, ws, size, duplex):
        qs = [CTX.Queue(maxsize=messages_for(size)) for _ in range(2 if duplex else 1)]
        return (qs, "a"), (qs, "b"), qs

    def destroy(self, qs):
        for q in qs:
            q.close()
            q.join_thread()

    def open(self, spec, side):
        return _MpQueueEndpoint(spec[0], side)


class _MpQueueEndpoint(Endpoint):
    copies_on_send = False  # put() hands the object to a feeder thread that pickles it later

    def __init__(self, qs, side):
        import queue
        self._qs = qs
        tx = qs[0] if side == "a" else (qs[1] if len(qs) > 1 else None)
        rx = (qs[1] if len(qs) > 1 else None) if side == "a" else qs[0]
        t, empty, full = OP_TIMEOUT, queue.Empty, queue.Full
        if tx is not None:
            put = tx.put

            def send(buf):
                try:
                    put(buf, True, t)
                except full:
                    raise TimeoutError(f"multiprocessing.Queue.put blocked {t} s") from None
            self.send = send
        if rx is not None:
            get = rx.get

            def recv():
                try:
                    return get(True, t)
                except empty:
                    raise TimeoutError(f"multiprocessing.Queue.get waited {t} s") from None
            self.recv = recv

    def close(self):
        for q in self._qs:
            q.close()
            q.join_thread()


# ---------------------------------------------------------------------- multiprocessing.Pipe

def set_socket_timeouts(fd: int, seconds: float) -> None:
    """Bound every blocking read/write on socket ``fd`` in the kernel (SO_RCVTIMEO/SNDTIMEO).

    A timed-out read then fails with EAGAIN, which Python raises as BlockingIOError.
    """
    s = socket.socket(fileno=os.dup(fd))
    try:
        tv = struct.pack("ll", int(seconds), int((seconds % 1) * 1e6))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
    finally:
        s.close()


class _ConnectionEndpoint(Endpoint):
    """An endpoint over a multiprocessing.connection.Connection (send_bytes/recv_bytes)."""

    def __init__(self, conn):
        self._conn = conn
        set_socket_timeouts(conn.fileno(), OP_TIMEOUT)
        sb, rb, t = conn.send_bytes, conn.recv_bytes, OP_TIMEOUT

        def send(buf):
            try:
                sb(buf)
            except BlockingIOError:
                raise TimeoutError(f"send_bytes blocked {t} s") from None

        def recv():
            try:
                return rb()
            except BlockingIOError:
                raise TimeoutError(f"recv_bytes waited {t} s") from None
        self.send, self.recv = send, recv

    def close(self):
        self._conn.close()


class MpPipe(Link):
    key = "mp-pipe"
    name = "multiprocessing.Pipe"

    def create(self, ws, size, duplex):
        a, b = CTX.Pipe(duplex=True)
        return a, b, (a, b)

    def destroy(self, ends):
        for c in ends:
            c.close()

    def open(self, spec, side):
        return _ConnectionEndpoint(spec)


# ------------------------------------------------------------------------------ pyzmq PAIR

def zmq_socket(kind: int, size: int):
    """A pyzmq socket with bounded waits and the same buffering as the others."""
    import zmq
    ctx = zmq.Context.instance()
    s = ctx.socket(kind)
    ms = int(OP_TIMEOUT * 1000)
    s.setsockopt(zmq.RCVTIMEO, ms)
    s.setsockopt(zmq.SNDTIMEO, ms)
    s.setsockopt(zmq.LINGER, 2000)
    s.setsockopt(zmq.SNDHWM, messages_for(size))
    s.setsockopt(zmq.RCVHWM, messages_for(size))
    return s


class ZmqPair(Link):
    key = "zmq"
    name = "pyzmq PAIR"

    def unavailable(self):
        return _missing("zmq")

    def create(self, ws, size, duplex):
        addr = "ipc://" + ws.path("zmq-pair") + ".sock"
        return (addr, size), (addr, size), None

    def open(self, spec, side):
        return _ZmqEndpoint(spec[0], spec[1], side)


class _ZmqEndpoint(Endpoint):
    def __init__(self, addr, size, side):
        import zmq
        s = zmq_socket(zmq.PAIR, size)
        if side == "b":
            s.bind(addr)
        else:
            s.connect(addr)
        self._wire(s)

    def _wire(self, s):
        import zmq
        self._s = s
        snd, rcv, again, t = s.send, s.recv, zmq.Again, OP_TIMEOUT

        def send(buf):
            try:
                snd(buf)
            except again:
                raise TimeoutError(f"zmq send blocked {t} s") from None

        def recv():
            try:
                return rcv()
            except again:
                raise TimeoutError(f"zmq recv waited {t} s") from None
        self.send, self.recv = send, recv

    def close(self):
        self._s.close()


# ------------------------------------------------------------------------------ faster-fifo

def ff_dumps(obj):
    """faster-fifo hook: send raw bytes (no pickling). It reads len() and the address."""
    return obj


def ff_loads(view):
    """faster-fifo hook: copy the message out of its reusable receive buffer."""
    return bytes(view)


class FasterFifo(Link):
    key = "faster-fifo"
    name = "faster-fifo"
    modes = ("single", "batch")

    def unavailable(self):
        return _missing("faster_fifo") or _missing("faster_fifo_reduction")

    def create(self, ws, size, duplex):
        import faster_fifo
        import faster_fifo_reduction  # noqa: F401  (makes the Queue picklable for spawn)
        qs = [faster_fifo.Queue(max_size_bytes=capacity_for(size), loads=ff_loads, dumps=ff_dumps)
              for _ in range(2 if duplex else 1)]
        return (qs, "a"), (qs, "b"), qs

    def destroy(self, qs):
        for q in qs:
            q.close()

    def open(self, spec, side):
        return _FasterFifoEndpoint(spec[0], side)


class _FasterFifoEndpoint(Endpoint):
    def __init__(self, qs, side):
        import queue
        import faster_fifo_reduction  # noqa: F401
        tx = qs[0] if side == "a" else (qs[1] if len(qs) > 1 else None)
        rx = (qs[1] if len(qs) > 1 else None) if side == "a" else qs[0]
        t, empty, full = OP_TIMEOUT, queue.Empty, queue.Full
        cache: dict[int, Any] = {}

        def raw(buf):
            # faster-fifo takes the address of what dumps() returns through ctypes.cast,
            # which accepts bytes but not bytearray; expose a reused bytearray zero-copy.
            if type(buf) is bytes:
                return buf
            arr = cache.get(id(buf))
            if arr is None or arr[0] is not buf:
                arr = cache[id(buf)] = (buf, (ctypes.c_char * len(buf)).from_buffer(buf))
            return arr[1]

        if tx is not None:
            put, put_many = tx.put, tx.put_many

            def send(buf):
                try:
                    put(raw(buf), True, t)
                except full:
                    raise TimeoutError(f"faster-fifo put blocked {t} s") from None

            def send_many(bufs):
                try:
                    put_many([raw(b) for b in bufs], True, t)
                except full:
                    raise TimeoutError(f"faster-fifo put_many blocked {t} s") from None
                return len(bufs)
            self.send, self.send_many = send, send_many
        if rx is not None:
            get, get_many = rx.get, rx.get_many

            def recv():
                try:
                    return get(True, t)
                except empty:
                    raise TimeoutError(f"faster-fifo get waited {t} s") from None

            def recv_many(n):
                try:
                    return get_many(True, t, n)
                except empty:
                    raise TimeoutError(f"faster-fifo get_many waited {t} s") from None
            self.recv, self.recv_many = recv, recv_many


# -------------------------------------------------------------------- posix_ipc MessageQueue

def _mq_limits() -> tuple[int, int]:
    def read(p, default):
        try:
            with open(p) as f:
                return int(f.read())
        except (OSError, ValueError):
            return default
    return read("/proc/sys/fs/mqueue/msg_max", 10), read("/proc/sys/fs/mqueue/msgsize_max", 8192)


class PosixMq(Link):
    key = "posix-ipc"
    name = "posix_ipc.MessageQueue"

    def unavailable(self):
        return _missing("posix_ipc")

    def limit(self, size):
        _, msgsize_max = _mq_limits()
        if size > msgsize_max:
            return (f"message size {size} exceeds the kernel limit fs.mqueue.msgsize_max="
                    f"{msgsize_max}")
        return None

    def create(self, ws, size, duplex):
        import posix_ipc
        msg_max, msgsize_max = _mq_limits()
        names = ["/" + ws.name("mq") for _ in range(2 if duplex else 1)]
        ws.mq_names.extend(names)  # swept after the case if destroy() never ran
        held = []
        try:
            for n in names:
                held.append(posix_ipc.MessageQueue(n, posix_ipc.O_CREX,
                                                   max_messages=min(msg_max, messages_for(size)),
                                                   max_message_size=max(size, 64)))
        except BaseException:
            self.destroy(held)
            raise
        return (names, "a"), (names, "b"), held

    def destroy(self, held):
        for q in held:
            try:
                q.unlink()
            except Exception:
                pass
            q.close()

    def open(self, spec, side):
        return _PosixMqEndpoint(spec[0], side)


class _PosixMqEndpoint(Endpoint):
    def __init__(self, names, side):
        import posix_ipc
        self._qs = qs = [posix_ipc.MessageQueue(n) for n in names]
        tx = qs[0] if side == "a" else (qs[1] if len(qs) > 1 else None)
        rx = (qs[1] if len(qs) > 1 else None) if side == "a" else qs[0]
        t, busy = OP_TIMEOUT, posix_ipc.BusyError
        if tx is not None:
            snd = tx.send

            def send(buf):
                try:
                    snd(buf, t)
                except busy:
                    raise TimeoutError(f"mq_timedsend blocked {t} s") from None
            self.send = send
        if rx is not None:
            rcv = rx.receive

            def recv():
                try:
                    return rcv(t)[0]
                except busy:
                    raise TimeoutError(f"mq_timedreceive waited {t} s") from None
            self.recv = recv

    def close(self):
        for q in self._qs:
            q.close()


# -------------------------------------------------------------------------------- iceoryx2

def iox2_node(prefix: str, root: str):
    """An iceoryx2 node whose files all live under this run's prefix and root (for cleanup)."""
    import iceoryx2 as iox2
    iox2.set_log_level(iox2.LogLevel.Error)
    cfg = iox2.config.default()
    cfg.global_cfg.prefix = iox2.FileName.new(prefix)
    cfg.global_cfg.root_path = iox2.Path.new(root)
    return iox2.NodeBuilder.new().config(cfg).create(iox2.ServiceType.Ipc)


def iox2_service(node, name: str, size: int, buffer: int, subscribers: int = 1,
                 timeout: float = 30.0):
    """Open or create a lossless publish-subscribe service of byte slices.

    Both sides call this at about the same time; a side that finds the service half-made by
    the other gets an error and retries until ``timeout``.
    """
    import iceoryx2 as iox2
    deadline = time.monotonic() + timeout
    while True:
        try:
            return (node.service_builder(iox2.ServiceName.new(name))
                    .publish_subscribe(iox2.Slice[ctypes.c_uint8])
                    .enable_safe_overflow(False)
                    .history_size(0)
                    .subscriber_max_buffer_size(buffer)
                    .max_subscribers(max(2, subscribers))
                    .max_publishers(2)
                    .open_or_create())
        except iox2.PublishSubscribeOpenOrCreateError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.005)


def iox2_publisher(service, size: int):
    import iceoryx2 as iox2
    return (service.publisher_builder()
            .initial_max_slice_len(size)
            .allocation_strategy(iox2.AllocationStrategy.Static)
            .backpressure_strategy(iox2.BackpressureStrategy.RetryUntilDelivered)
            .create())


def iox2_wait_connected(services, subscribers: int, timeout: float = 30.0) -> None:
    """Wait until each service has a publisher and ``subscribers`` subscribers."""
    deadline = time.monotonic() + timeout
    for svc in services:
        while True:
            dc = svc.dynamic_config
            if dc.number_of_publishers >= 1 and dc.number_of_subscribers >= subscribers:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"iceoryx2 peers did not connect in {timeout} s")
            time.sleep(0.001)


def iox2_cleanup(state: tuple[str, str]) -> None:
    """Remove the files iceoryx2 keeps under this run's prefix once its processes are gone.

    A node leaves its global management segment behind by design; services leave nothing when
    their ports were dropped, but a killed child may leave them too.
    """
    prefix, root = state
    for f in glob.glob(f"/dev/shm/{prefix}*"):
        try:
            os.unlink(f)
        except FileNotFoundError:
            pass
    shutil.rmtree(root, ignore_errors=True)


def iox2_buffer_for(size: int) -> int:
    return max(2, min(256, messages_for(size)))


def iox2_sender(pub, subscribers: int = 1):
    """send(buf): loan a sample, copy ``buf`` in, publish (blocks while subscribers are full).

    ``Sample.send()`` returns how many subscribers got the sample. With back-pressure
    ``RetryUntilDelivered`` that is all of them, except in the case iceoryx2 issue #305
    describes (a subscriber that has not polled since it connected: a full buffer then drops
    instead of blocking). ``open`` polls every subscriber once to avoid that; this check
    turns any drop that still happens into a clear error instead of a payload mismatch.
    """
    memmove = ctypes.memmove
    cache: dict[int, Any] = {}
    loan = pub.loan_slice_uninit

    def src(buf):
        if type(buf) is bytes:
            return buf
        arr = cache.get(id(buf))
        if arr is None or arr[0] is not buf:
            view = (ctypes.c_char * len(buf)).from_buffer(buf)
            arr = cache[id(buf)] = (buf, ctypes.addressof(view), view)
        return arr[1]

    def send(buf):
        n = len(buf)
        s = loan(n)
        memmove(s.payload_ptr, src(buf), n)
        got = s.assume_init().send()
        if got < subscribers:
            raise PayloadError(f"iceoryx2 dropped a sample: send() reached {got} of {subscribers} "
                               "subscribers despite back-pressure RetryUntilDelivered")
    return send


def iox2_receiver(sub):
    """recv(): busy-poll ``receive()``, copy the payload into bytes, release the sample."""
    string_at, yield_, clock, t = ctypes.string_at, os.sched_yield, time.monotonic, OP_TIMEOUT
    receive = sub.receive

    def recv():
        s = receive()
        if s is None:
            deadline = clock() + t
            polls = 0
            while s is None:
                polls += 1
                if polls & 1023 == 0 and clock() > deadline:
                    raise TimeoutError(f"iceoryx2 receive polled {t} s without a sample")
                yield_()
                s = receive()
        data = string_at(s.payload_ptr, s.header.number_of_elements)
        s.delete()
        return data
    return recv


class Iceoryx2(Link):
    key = "iceoryx2"
    name = "iceoryx2 pub/sub"

    def unavailable(self):
        return _missing("iceoryx2")

    def create(self, ws, size, duplex):
        names = [ws.name("iox") for _ in range(2 if duplex else 1)]
        spec = (names, size, ws.iox2_prefix, ws.iox2_root)
        return spec, spec, (ws.iox2_prefix, ws.iox2_root)

    def destroy(self, state):
        iox2_cleanup(state)

    def open(self, spec, side):
        return _Iox2Endpoint(*spec, side)


class _Iox2Endpoint(Endpoint):
    def __init__(self, names, size, prefix, root, side):
        self._node = node = iox2_node(prefix, root)
        buf = iox2_buffer_for(size)
        self._svcs = svcs = [iox2_service(node, n, size, buf) for n in names]
        tx = svcs[0] if side == "a" else (svcs[1] if len(svcs) > 1 else None)
        rx = (svcs[1] if len(svcs) > 1 else None) if side == "a" else svcs[0]
        self._ports = []
        if tx is not None:
            pub = iox2_publisher(tx, size)
            self._ports.append(pub)
            self.send = iox2_sender(pub)
        if rx is not None:
            sub = rx.subscriber_builder().buffer_size(buf).create()
            self._ports.append(sub)
            self.recv = iox2_receiver(sub)
        iox2_wait_connected(svcs, 1)
        for p in self._ports:
            if hasattr(p, "update_connections"):
                p.update_connections()
            else:
                p.has_samples()  # a subscriber connects to the publisher's data when it polls

    def close(self):
        for p in reversed(self._ports):
            p.delete()
        self._ports = []


# ---------------------------------------------------------------------------------- roster

def links() -> list[Link]:
    """Every point-to-point competitor, shmlink first."""
    return [ShmlinkQueue("hybrid"), ShmlinkQueue("block"), MpQueue(), MpPipe(), ZmqPair(),
            FasterFifo(), PosixMq(), Iceoryx2()]
