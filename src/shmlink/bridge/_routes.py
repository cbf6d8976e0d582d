"""The routes: a thread per route that moves messages between a local object and Zenoh.

Lossless routes (queues, lossless topics) run a go-back-N protocol on top of
Zenoh's reliable, blocking transport (see ``docs/bridge.md``):

* the exporter numbers every message it takes from the local object
  (``session``, ``seq``), keeps it in its window until the importer
  acknowledges it, and takes nothing more while the window is full (so the
  local ``send`` waits on a full queue: back-pressure);
* the importer accepts only the next sequence number it expects, puts the
  message into its local object, and only then acknowledges it;
* the exporter sends its whole window again when an importer appears
  (after a link cut, or an importer restart), when the importer reports a
  gap, and when no acknowledgement came for a while.

Latest routes (boards, latest topics) send the newest value and never wait.
"""

from __future__ import annotations

import logging
import os
import queue as _queue
import threading
import time
from collections import deque
from typing import Any, Callable

from ..board import Board
from ..connection import Connection, Listener, connect, listen
from ..errors import RemoteError, SegmentExists, SegmentNotFound, ShmlinkError, Timeout
from ..queue import Queue
from ..topic import Topic
from . import _frames as F
from ._config import RouteSpec

log = logging.getLogger("shmlink.bridge")

__all__ = ["make_route", "Route"]

#: most messages in one frame, and most bytes (a frame may pass it by one message)
BATCH = 512
FRAME_BYTES = 1 << 20
#: first wait for an acknowledgement before the window is sent again (doubles up to RETRANSMIT_MAX)
RETRANSMIT_S = 1.0
RETRANSMIT_MAX = 8.0
#: an importer that sees a gap asks for a retransmission at most this often
NACK_EVERY_S = 0.2
#: how long a blocking local call waits before looking at the stop flag again
SLICE_S = 0.1

_SUFFIX_ACK = "/_shmlink_ack"
_SUFFIX_EXP = "/_shmlink_exp"
_SUFFIX_IMP = "/_shmlink_imp"


def _zenoh() -> Any:
    import zenoh
    return zenoh


def new_session_id() -> int:
    return int.from_bytes(os.urandom(8), "little") or 1


class Route:
    """What every route shares: its spec, counters, peer tracking and thread."""

    spec: RouteSpec

    def __init__(self, bridge: Any, spec: RouteSpec) -> None:
        self.spec = spec
        self.bridge = bridge
        self.sid = new_session_id()
        self.forwarded = 0          # messages this route moved (export: sent; import: delivered)
        self.missed = 0             # latest routes: messages that never arrived, or were skipped
        self.retransmitted = 0
        self.duplicates = 0
        self.bad_frames = 0
        self.error: str | None = None
        self.peers: set[str] = set()
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._decls: list[Any] = []
        self._obj: Any = None

    # -- set-up --

    def _declare(self, thing: Any) -> Any:
        self._decls.append(thing)
        return thing

    def _watch_peers(self, suffix: str) -> None:
        self._z = _zenoh()  # before the subscriber: its history calls _on_peer_sample at once
        sess = self.bridge.session
        mine = _SUFFIX_EXP if suffix == _SUFFIX_IMP else _SUFFIX_IMP
        self._declare(sess.liveliness().declare_token(f"{self.spec.key}{mine}/{self.sid:016x}"))
        self._declare(sess.liveliness().declare_subscriber(
            f"{self.spec.key}{suffix}/*", self._on_peer_sample, history=True))

    def _on_peer_sample(self, sample: Any) -> None:
        peer = str(sample.key_expr).rsplit("/", 1)[-1]
        if sample.kind == self._z.SampleKind.PUT:
            with self._cond:
                new = peer not in self.peers
                self.peers.add(peer)
            if new:
                log.info("%s: peer %s connected", self.spec.label, peer)
                self.on_peer(peer, True)
        else:
            with self._cond:
                self.peers.discard(peer)
            log.warning("%s: peer %s gone (link cut or bridge stopped)", self.spec.label, peer)
            self.on_peer(peer, False)

    def on_peer(self, peer: str, present: bool) -> None:
        """A peer route's liveliness token appeared or went (a Zenoh thread calls this)."""

    def start(self) -> None:
        self._thread = threading.Thread(target=self._main, name=f"bridge {self.spec.label}",
                                        daemon=True)
        self._thread.start()

    def _main(self) -> None:
        try:
            self.run()
        except BaseException as e:  # reported by the bridge, which exits non-zero
            self.error = f"{type(e).__name__}: {e}"
            log.error("%s: stopped: %s", self.spec.label, self.error)
            self.bridge._route_failed(self)

    def run(self) -> None:
        raise NotImplementedError

    def stop(self, timeout: float = 6.0) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def close(self) -> None:
        for d in reversed(self._decls):
            try:
                d.undeclare()
            except Exception:
                pass
        self._decls.clear()
        self._close_local()

    def _close_local(self) -> None:
        if self._obj is not None:
            self._obj.close()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def status(self) -> dict[str, Any]:
        s = self.spec
        return {"route": s.label, "direction": s.direction, "kind": s.kind, "object": s.object,
                "key": s.key, "mode": s.mode, "session": f"{self.sid:016x}",
                "connected": bool(self.peers), "peers": len(self.peers),
                "forwarded": self.forwarded, "missed": self.missed,
                "retransmitted": self.retransmitted, "duplicates": self.duplicates,
                "bad_frames": self.bad_frames, "lag": self.lag(), "error": self.error}

    def lag(self) -> int:
        return 0

    def _publisher(self, key: str) -> Any:
        z = _zenoh()
        return self._declare(self.bridge.session.declare_publisher(
            key, congestion_control=z.CongestionControl.BLOCK,
            reliability=z.Reliability.RELIABLE, express=False))


# ---------------------------------------------------------------------------------- local objects


def _open_source(spec: RouteSpec) -> tuple[Any, Any]:
    """(object, subscriber or None) for an export route; SegmentNotFound names the route."""
    cls: Any = {"queue": Queue, "topic": Topic, "board": Board}[spec.kind]
    try:
        obj = cls.open(spec.object)
    except SegmentNotFound:
        raise SegmentNotFound(
            f"route {spec.label}: there is no {spec.kind} named {spec.object!r} to export; "
            f"create it first (the exporting bridge does not create the object it reads)"
        ) from None
    sub = obj.subscribe("newest") if spec.kind == "topic" else None
    return obj, sub


def _open_sink(spec: RouteSpec) -> Any:
    """The local object an import route writes into, created with ``spec.capacity`` if missing."""
    cls: Any = {"queue": Queue, "topic": Topic, "board": Board}[spec.kind]
    for _ in range(3):
        try:
            return cls.open(spec.object)
        except SegmentNotFound:
            pass
        try:
            if spec.kind == "topic":
                return Topic.create(spec.object, spec.capacity,
                                    delivery="latest" if spec.mode == "latest" else "lossless")
            return cls.create(spec.object, spec.capacity)
        except SegmentExists:
            continue
    raise ShmlinkError(f"route {spec.label}: {spec.object!r} keeps appearing and vanishing; "
                       "is another program removing it?")


# ------------------------------------------------------------------------------------- exporters


class LosslessExporter(Route):
    """Queue or lossless topic -> Zenoh, with a window of unacknowledged messages."""

    def __init__(self, bridge: Any, spec: RouteSpec) -> None:
        super().__init__(bridge, spec)
        self._obj, self._sub = _open_source(spec)
        if spec.kind == "topic" and self._obj.delivery != "lossless":
            raise ShmlinkError(f"route {spec.label}: topic {spec.object!r} is a latest topic; "
                               "export it with mode = \"latest\"")
        src = self._sub if self._sub is not None else self._obj
        self._take: Callable[..., list[bytes]] = src.recv_many
        self.window_limit = bridge.config.window
        self.window_bytes_limit = bridge.config.window_bytes
        self._window: deque[bytes] = deque()
        self._win_first = 0     # sequence number of _window[0]
        self._next = 0          # sequence number of the next message taken
        self._win_bytes = 0
        self._resend = False
        self._last_progress = time.monotonic()
        self._backoff = RETRANSMIT_S
        self.acked = 0
        self._pub = self._publisher(spec.key)
        self._declare(bridge.session.declare_subscriber(spec.key + _SUFFIX_ACK, self._on_ack))
        self._watch_peers(_SUFFIX_IMP)

    def on_peer(self, peer: str, present: bool) -> None:
        if present:  # an importer (re)appeared: whatever it has not acknowledged goes again
            with self._cond:
                self._resend = True
                self._cond.notify_all()

    def _on_ack(self, sample: Any) -> None:
        try:
            buf = sample.payload.to_bytes()
            h = F.decode_header(buf)
        except F.FrameError:
            self.bad_frames += 1
            return
        if h.type != F.ACK or h.session != self.sid:
            return
        with self._cond:
            n = h.base
            if n > self._next:
                self.bad_frames += 1  # acknowledges what was never sent: not ours to trust
                return
            if n > self._win_first:
                w = self._window
                for _ in range(n - self._win_first):
                    self._win_bytes -= len(w.popleft())
                self.acked += n - self._win_first
                self._win_first = n
                self._last_progress = time.monotonic()
                self._backoff = RETRANSMIT_S
                self._cond.notify_all()
            if h.flags & F.FLAG_NACK:
                self._resend = True
                self._cond.notify_all()

    def _put(self, first: int, base: int, msgs: list[bytes]) -> None:
        i = 0
        while i < len(msgs):
            j, size = i, 0
            while j < len(msgs) and j - i < BATCH and (size < FRAME_BYTES or j == i):
                size += len(msgs[j])
                j += 1
            self._pub.put(F.encode_batch(F.DATA, self.sid, base, first + i, msgs[i:j]))
            i = j

    def run(self) -> None:
        last_resend = 0.0
        while not self._stop.is_set():
            resend: tuple[int, list[bytes]] | None = None
            with self._cond:
                now = time.monotonic()
                if self._window and (self._resend or now - max(self._last_progress, last_resend)
                                     > self._backoff):
                    if not self._resend:
                        self._backoff = min(self._backoff * 2, RETRANSMIT_MAX)
                    resend = (self._win_first, list(self._window))
                self._resend = False
                room = self.window_limit - len(self._window)
                if self._win_bytes >= self.window_bytes_limit:
                    room = 0
                if resend is None and room <= 0:
                    self._cond.wait(0.05)
                    continue
            if resend is not None:
                last_resend = time.monotonic()
                self._put(resend[0], resend[0], resend[1])
                self.retransmitted += len(resend[1])
                continue
            try:
                msgs = self._take(min(room, BATCH), timeout=0.05)
            except Timeout:
                continue
            with self._cond:
                if not self._window:
                    self._last_progress = time.monotonic()
                first = self._next
                self._window.extend(msgs)
                self._next += len(msgs)
                self._win_bytes += sum(map(len, msgs))
                base = self._win_first
            self._put(first, base, msgs)
            self.forwarded += len(msgs)

    def lag(self) -> int:
        backlog = self._sub.lag if self._sub is not None else len(self._obj)
        return (self._next - self._win_first) + backlog

    def status(self) -> dict[str, Any]:
        d = super().status()
        d.update(acked=self.acked, in_flight=self._next - self._win_first)
        return d

    def _close_local(self) -> None:
        if self._sub is not None:
            self._sub.close()
        super()._close_local()


class LatestExporter(Route):
    """Board or latest topic -> Zenoh: the newest values, never waiting for the far side."""

    def __init__(self, bridge: Any, spec: RouteSpec) -> None:
        super().__init__(bridge, spec)
        self._obj, self._sub = _open_source(spec)
        if spec.kind == "topic" and self._obj.delivery != "latest":
            raise ShmlinkError(f"route {spec.label}: topic {spec.object!r} is lossless; export "
                               "it with mode = \"lossless\" (the default)")
        self._seq = 0
        self._resend = False
        self._pub = self._publisher(spec.key)
        self._watch_peers(_SUFFIX_IMP)

    def on_peer(self, peer: str, present: bool) -> None:
        if present and self.spec.kind == "board":
            with self._cond:
                self._resend = True

    def run(self) -> None:
        if self.spec.kind == "board":
            self._run_board()
        else:
            self._run_topic()

    def _run_board(self) -> None:
        board: Board = self._obj
        seen = -1
        while not self._stop.is_set():
            with self._cond:
                force, self._resend = self._resend, False
            if not force:
                try:
                    board.wait_for_change(seen, timeout=SLICE_S)
                except Timeout:
                    continue
            version, value = board.read_versioned()
            if version == 0:  # never written: nothing to carry
                seen = 0
                continue
            self._pub.put(F.encode_batch(F.LATEST, self.sid, 0, version, [value]))
            if version == seen:
                self.retransmitted += 1  # the same value again, for an importer that appeared
                continue
            if seen >= 0 and version > seen + 1:
                self.missed += version - seen - 1  # overwritten before the bridge read them
            seen = version
            self.forwarded += 1

    def _run_topic(self) -> None:
        sub = self._sub
        while not self._stop.is_set():
            try:
                msgs = sub.recv_many(BATCH, timeout=SLICE_S)
            except Timeout:
                continue
            self._pub.put(F.encode_batch(F.LATEST, self.sid, 0, self._seq, msgs))
            self._seq += len(msgs)
            self.forwarded += len(msgs)
            self.missed = sub.missed

    def lag(self) -> int:
        return self._sub.lag if self._sub is not None else 0

    def _close_local(self) -> None:
        if self._sub is not None:
            self._sub.close()
        super()._close_local()


# ------------------------------------------------------------------------------------- importers


class _Session:
    """What an importer knows of one exporter session.

    ``pending`` holds batches ``(seq, messages)`` received in order and not yet
    in the local object: together they are sequence numbers
    ``[expected, recv_next)``.
    """

    __slots__ = ("expected", "recv_next", "pending", "busy", "last_nack", "last_ack", "gone")

    def __init__(self, start: int) -> None:
        self.expected = start     # next sequence number to put into the local object
        self.recv_next = start    # next sequence number to accept from the link
        self.pending: deque[tuple[int, list[bytes]]] = deque()
        self.busy = False         # the route thread is putting a batch of it into the local object
        self.last_nack = 0.0
        self.last_ack = 0.0
        self.gone = 0.0           # when the exporter's liveliness token went (0: present)


#: an importer forgets an exporter session this long after its token went (a link cut
#: shorter than this repeats nothing: the session's state, what was delivered, is kept)
SESSION_KEEP_S = 600.0


class LosslessImporter(Route):
    """Zenoh -> queue or lossless topic: in order, de-duplicated, acknowledged once local."""

    def __init__(self, bridge: Any, spec: RouteSpec) -> None:
        super().__init__(bridge, spec)
        self._obj = _open_sink(spec)
        if spec.kind == "topic" and self._obj.delivery != "lossless":
            raise ShmlinkError(f"route {spec.label}: the local topic {spec.object!r} is a latest "
                               "topic; import it with mode = \"lossless\"")
        self._give = self._obj.publish_many if spec.kind == "topic" else self._obj.send_many
        self._sessions: dict[int, _Session] = {}
        self._ack_pub = self._publisher(spec.key + _SUFFIX_ACK)
        self._declare(bridge.session.declare_subscriber(spec.key, self._on_data))
        self._watch_peers(_SUFFIX_EXP)

    def on_peer(self, peer: str, present: bool) -> None:
        try:
            sid = int(peer, 16)
        except ValueError:
            return
        with self._cond:
            # Keep the session across a link cut: its acknowledgements sent just before the
            # cut may be lost, and only this state stops the exporter's resent window from
            # going into the local object twice.
            st = self._sessions.get(sid)
            if st is not None:
                st.gone = 0.0 if present else time.monotonic()

    def _forget_old_sessions(self, now: float) -> None:
        for sid in [sid for sid, s in self._sessions.items()
                    if s.gone and now - s.gone > SESSION_KEEP_S and not s.pending]:
            del self._sessions[sid]

    def _ack(self, session: int, expected: int, *, nack: bool = False) -> None:
        self._ack_pub.put(F.encode_ack(session, expected, self.sid, nack=nack))

    def _on_data(self, sample: Any) -> None:
        try:
            buf = sample.payload.to_bytes()
            h = F.decode_header(buf)
            if h.type != F.DATA:
                raise F.FrameError(f"a lossless route got a frame of type {h.type}")
        except F.FrameError as e:
            self.bad_frames += 1
            if self.bad_frames == 1:
                log.warning("%s: ignoring a frame that is not ours (%s); is another program "
                            "publishing on %r?", self.spec.label, e, self.spec.key)
            return
        reply: tuple[int, int, bool] | None = None
        with self._cond:
            now = time.monotonic()
            st = self._sessions.get(h.session)
            if st is None:  # a new exporter (or this importer is new): start at its window
                self._forget_old_sessions(now)
                st = self._sessions[h.session] = _Session(h.base)
            if h.base > st.recv_next:
                # The exporter holds acknowledgements for messages this importer never
                # received: a previous run of this importer put them into the local object
                # (one importer per key) and its acknowledgements arrived late.  Skip them.
                self.duplicates += h.base - st.recv_next
                st.recv_next = h.base
                while st.pending and st.pending[0][0] + len(st.pending[0][1]) <= h.base:
                    st.pending.popleft()
                if st.pending:
                    seq, msgs = st.pending[0]
                    st.pending[0] = (h.base, msgs[h.base - seq:])
                st.expected = max(st.expected, h.base)
            if h.first > st.recv_next:  # messages before this frame were lost on a cut link
                if now - st.last_nack > NACK_EVERY_S:
                    st.last_nack = now
                    reply = (h.session, st.expected, True)
            else:
                skip = st.recv_next - h.first
                if skip >= h.count:
                    self.duplicates += h.count
                    if now - st.last_ack > NACK_EVERY_S:  # our acknowledgement may be lost
                        st.last_ack = now
                        reply = (h.session, st.expected, False)
                else:
                    try:
                        msgs = F.decode_messages(buf, h.count)
                    except F.FrameError:
                        self.bad_frames += 1
                        return
                    self.duplicates += skip
                    seq = st.recv_next
                    if skip:
                        msgs = msgs[skip:]
                    st.recv_next = h.first + h.count
                    if not any(s.pending or s.busy for s in self._sessions.values()):
                        # Nothing of this session waits: put the frame into the local object
                        # from here, without blocking (no hand-over to the route thread, which
                        # is most of a round trip's time); what does not fit waits for it.
                        got = self._try_give(msgs)
                        if got:
                            self.forwarded += got
                            st.expected = seq = seq + got
                            st.last_ack = now
                            reply = (h.session, seq, False)
                            msgs = msgs[got:]
                    if msgs:
                        st.pending.append((seq, msgs))
                        self._cond.notify_all()
        if reply is not None:
            self._ack(*reply[:2], nack=reply[2])

    def _try_give(self, msgs: list[bytes]) -> int:
        """Put what fits of ``msgs`` into the local object now; how many went in."""
        try:
            self._give(msgs, timeout=0)
            return len(msgs)
        except Timeout as e:
            return getattr(e, "sent", 0)

    def run(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                st: _Session | None = None
                sid = 0
                for sid, s in self._sessions.items():
                    if s.pending:
                        st = s
                        break
                if st is None:
                    self._cond.wait(0.05)
                    continue
                seq, batch = st.pending.popleft()
                st.busy = True
            try:
                self._deliver(sid, st, seq, batch)
            finally:
                with self._cond:
                    st.busy = False

    def _deliver(self, sid: int, st: _Session, seq: int, batch: list[bytes]) -> None:
        """Put ``batch`` (numbered from ``seq``) into the local object, acknowledging as it goes."""
        give = self._give
        n = len(batch)
        done = 0
        while done < n:
            try:
                give(batch[done:] if done else batch, timeout=SLICE_S)
                got = n - done
            except Timeout as e:  # the local object is full: acknowledge what went in
                got = getattr(e, "sent", 0)
            if got:
                done += got
                with self._cond:
                    # max: a skip-ahead (see _on_data) may have moved it past this batch
                    st.expected = expected = max(st.expected, seq + done)
                    st.last_ack = time.monotonic()
                    self.forwarded += got
                self._ack(sid, expected)  # only now: the messages are in the local object
            elif self._stop.is_set():
                return  # not acknowledged: the exporter sends them again

    def lag(self) -> int:
        with self._cond:
            return sum(s.recv_next - s.expected for s in self._sessions.values())


class LatestImporter(Route):
    """Zenoh -> board or latest topic: the newest value wins; gaps are counted in ``missed``."""

    def __init__(self, bridge: Any, spec: RouteSpec) -> None:
        super().__init__(bridge, spec)
        self._obj = _open_sink(spec)
        if spec.kind == "topic" and self._obj.delivery != "latest":
            raise ShmlinkError(f"route {spec.label}: the local topic {spec.object!r} is lossless; "
                               "import it with mode = \"lossless\"")
        self._last: dict[int, int] = {}   # exporter session -> next sequence / last version
        self._inbox: deque[tuple[int, int, list[bytes]]] = deque(maxlen=1024)
        self._declare(bridge.session.declare_subscriber(spec.key, self._on_data))
        self._watch_peers(_SUFFIX_EXP)

    def _on_data(self, sample: Any) -> None:
        try:
            buf = sample.payload.to_bytes()
            h = F.decode_header(buf)
            if h.type != F.LATEST:
                raise F.FrameError(f"a latest route got a frame of type {h.type}")
            msgs = F.decode_messages(buf, h.count)
        except F.FrameError as e:
            self.bad_frames += 1
            if self.bad_frames == 1:
                log.warning("%s: ignoring a frame that is not ours (%s)", self.spec.label, e)
            return
        with self._cond:
            if len(self._inbox) == self._inbox.maxlen:
                self.missed += len(self._inbox[0][2])  # the local side fell that far behind
            self._inbox.append((h.session, h.first, msgs))
            self._cond.notify_all()

    def run(self) -> None:
        board = self.spec.kind == "board"
        while not self._stop.is_set():
            with self._cond:
                if not self._inbox:
                    self._cond.wait(0.05)
                    continue
                session, first, msgs = self._inbox.popleft()
            last = self._last.get(session)
            if board:
                if last is not None and first <= last:
                    continue  # an older value sent again (after a reconnection)
                if last is not None:
                    self.missed += first - last - 1
                self._last[session] = first
                try:
                    self._obj.write(msgs[-1], timeout=SLICE_S * 10)
                except ShmlinkError as e:
                    self.error = f"{type(e).__name__}: {e}"
                    log.error("%s: %s", self.spec.label, self.error)
                    continue
                self.forwarded += 1
            else:
                end = first + len(msgs)
                if last is not None:
                    if first > last:
                        self.missed += first - last  # lost on a cut link
                    elif first < last:
                        msgs = msgs[last - first:]  # already published
                    end = max(end, last)
                self._last[session] = end
                if msgs:
                    self._obj.publish_many(msgs)
                    self.forwarded += len(msgs)

    def lag(self) -> int:
        return len(self._inbox)


# ----------------------------------------------------------------------------------- connections

#: longest a request may take across the link and through the far server
REQUEST_TIMEOUT_S = 30.0
#: requests one exported listener serves at once (one local connection each)
SERVERS = 4


class ConnectionExporter(Route):
    """Zenoh queryable -> a local listener: each query is one request on a local connection.

    ``SERVERS`` threads each hold a connection to the local listener; a query
    waits in a bounded inbox for one of them, and is answered with the
    server's response, or with an error (a server's exception, a timeout, a
    full inbox) that the far client's ``request`` raises as ``RemoteError``.
    """

    def __init__(self, bridge: Any, spec: RouteSpec) -> None:
        super().__init__(bridge, spec)
        self._inbox: _queue.Queue[Any] = _queue.Queue(maxsize=64 * SERVERS)
        try:  # the exported listener must exist, like any exported object
            Listener.open(spec.object, timeout=2.0).close()
        except ShmlinkError as e:
            raise SegmentNotFound(
                f"route {spec.label}: there is no listener {spec.object!r} to export "
                f"({type(e).__name__}); start its server first") from None
        self._declare(bridge.session.declare_queryable(spec.key, self._on_query))
        self._watch_peers(_SUFFIX_IMP)

    def _on_query(self, query: Any) -> None:
        try:
            self._inbox.put_nowait(query)
        except _queue.Full:
            self.missed += 1
            query.reply_err(f"bridge {self.bridge.config.name}: route {self.spec.label} has "
                            f"{self._inbox.maxsize} requests waiting; try again later")
            query.drop()

    def run(self) -> None:
        workers = [threading.Thread(target=self._serve, daemon=True,
                                    name=f"bridge {self.spec.label} server {i}")
                   for i in range(SERVERS)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()

    def _serve(self) -> None:
        conn: Connection | None = None
        try:
            while not self._stop.is_set():
                try:
                    query = self._inbox.get(timeout=SLICE_S)
                except _queue.Empty:
                    continue
                try:
                    if conn is None:
                        conn = connect(self.spec.object, timeout=5.0)
                    payload = query.payload.to_bytes() if query.payload is not None else b""
                    query.reply(query.key_expr, conn.request(payload, timeout=REQUEST_TIMEOUT_S))
                    with self._cond:
                        self.forwarded += 1
                except RemoteError as e:  # the server raised: its message goes back
                    query.reply_err(str(e))
                except ShmlinkError as e:  # no server, it went away, or it took too long
                    if conn is not None:
                        conn.close()
                        conn = None
                    query.reply_err(f"route {self.spec.label}: {type(e).__name__}: {e}")
                finally:
                    query.drop()
        finally:
            if conn is not None:
                conn.close()

    def lag(self) -> int:
        return self._inbox.qsize()


class ConnectionImporter(Route):
    """A local listener -> Zenoh ``get``: local clients' requests are answered from far away.

    The bridge listens on the route's object name; each client it accepts
    gets a thread that serves its requests by querying the key.  An error
    from the far side (no route, the far server's exception, a timeout)
    makes the client's ``request`` raise ``RemoteError``.
    """

    def __init__(self, bridge: Any, spec: RouteSpec) -> None:
        super().__init__(bridge, spec)
        self._lst: Listener = listen(spec.object, capacity=spec.capacity)
        self._obj = self._lst
        self._conns: set[Connection] = set()
        self._watch_peers(_SUFFIX_EXP)

    def _answer(self, data: bytes) -> bytes:
        replies = self.bridge.session.get(self.spec.key, payload=bytes(data),
                                          timeout=REQUEST_TIMEOUT_S)
        for reply in replies:
            if reply.ok is not None:
                with self._cond:
                    self.forwarded += 1
                return reply.ok.payload.to_bytes()  # type: ignore[no-any-return]
            raise ShmlinkError(reply.err.payload.to_string())
        with self._cond:
            self.missed += 1
        raise Timeout(f"route {self.spec.label}: no answer from {self.spec.key!r} within "
                      f"{REQUEST_TIMEOUT_S} s (is the exporting bridge connected?)")

    def _client(self, conn: Connection) -> None:
        try:
            conn.serve(self._answer)
        except ShmlinkError:
            pass  # the client went away
        finally:
            with self._cond:
                self._conns.discard(conn)
            conn.close()

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                conn = self._lst.accept(timeout=SLICE_S)
            except Timeout:
                continue
            with self._cond:
                self._conns.add(conn)
            threading.Thread(target=self._client, args=(conn,), daemon=True,
                             name=f"bridge {self.spec.label} client").start()

    def stop(self, timeout: float = 6.0) -> None:
        super().stop(timeout)
        with self._cond:
            conns = list(self._conns)
        for c in conns:
            c.stop()

    def lag(self) -> int:
        return len(self._conns)


def make_route(bridge: Any, spec: RouteSpec) -> Route:
    """The route object that runs ``spec`` (opening or creating its local object)."""
    if spec.kind == "connection":
        return (ConnectionExporter if spec.direction == "export" else ConnectionImporter)(
            bridge, spec)
    lossless = spec.mode == "lossless"
    if spec.direction == "export":
        return (LosslessExporter if lossless else LatestExporter)(bridge, spec)
    return (LosslessImporter if lossless else LatestImporter)(bridge, spec)
