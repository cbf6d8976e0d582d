"""Scenario 3a: fan-out, one publisher to 1 and to 4 subscribers, every message to every one.

The one-way driver with several receivers: the publisher sends as fast as lossless delivery
allows, every subscriber checks every payload, and the rate is messages published per second
up to the moment the *last* subscriber has the stop marker. Sizes: 64 B and 4 KiB.

Competitors (all lossless, all with back-pressure):

- shmlink ``Topic`` in ``delivery="lossless"`` (the publisher waits for the slowest subscriber);
  skipped with a note while ``shmlink.Topic`` does not exist;
- pyzmq XPUB/SUB over ``ipc://`` with ``XPUB_NODROP`` (the publisher blocks at the high-water
  mark instead of dropping, so the count check holds) and ``XPUB_VERBOSE`` (the publisher
  starts only once it has seen every subscription: no slow-joiner loss);
- iceoryx2 publish-subscribe, one service with N subscribers, back-pressure
  ``RetryUntilDelivered``; subscribers busy-poll (``os.sched_yield()`` when empty), which on
  a 2-core machine with 4 subscribers means 5 processes compete for 2 cores.
"""
from __future__ import annotations

from functools import partial

import time
from typing import Any

from . import _harness as H
from . import peers
from ._drivers import run_oneway
from ._harness import OP_TIMEOUT
from ._scenario import Case, Column, Scenario, median_of

SIZES = [64, 4096]
FANOUT = [1, 4]
KEYS = ["msgs_per_s", "mb_per_s", "receiver_msgs_per_s"]


# ------------------------------------------------------------------------------ adapters

class ShmlinkTopic(peers.Link):
    key = "shmlink"
    name = "shmlink Topic"

    def __init__(self, wait: str = "hybrid") -> None:
        self.wait = wait

    def unavailable(self):
        try:
            import shmlink
        except ImportError as e:
            return f"shmlink is not importable ({e})"
        if not hasattr(shmlink, "Topic"):
            return "shmlink.Topic does not exist yet in this checkout"
        return None

    def create_oneway(self, ws, size, receivers):
        import shmlink
        name = ws.name("topic")
        t = shmlink.Topic.create(name, peers.capacity_for(size), delivery="lossless",
                                 max_subscribers=max(8, receivers), wait=self.wait)
        spec = (name, self.wait, receivers)
        return spec, [spec] * receivers, t

    def destroy(self, t):
        try:
            t.unlink()
        except Exception:
            pass
        t.close()

    def open(self, spec, side):
        return _TopicEndpoint(*spec, side)


class _TopicEndpoint(peers.Endpoint):
    def __init__(self, name, wait, receivers, side):
        import shmlink
        self._t = t = shmlink.Topic.open(name, wait=wait)
        self._sub = None
        tmo = OP_TIMEOUT
        if side == "a":
            deadline = time.monotonic() + 30.0
            while t.subscriber_count < receivers:  # every subscriber must exist before we publish
                if time.monotonic() > deadline:
                    raise TimeoutError(f"only {t.subscriber_count} of {receivers} subscribers came")
                time.sleep(0.002)
            self.send = partial(t.publish, timeout=tmo)
            self.send_many = partial(t.publish_many, timeout=tmo)
        else:
            self._sub = sub = t.subscribe("newest", timeout=tmo)
            self.recv = partial(sub.recv, timeout=tmo)
            self.recv_many = partial(sub.recv_many, timeout=tmo)

    def close(self):
        if self._sub is not None:
            self._sub.close()
        self._t.close()


class ZmqPubSub(peers.Link):
    key = "zmq"
    name = "pyzmq XPUB/SUB"

    def unavailable(self):
        return peers._missing("zmq")

    def create_oneway(self, ws, size, receivers):
        addr = "ipc://" + ws.path("zmq-pub") + ".sock"
        spec = (addr, size, receivers)
        return spec, [spec] * receivers, None

    def open(self, spec, side):
        return _ZmqPubSubEndpoint(*spec, side)


class _ZmqPubSubEndpoint(peers.Endpoint):
    def __init__(self, addr, size, receivers, side):
        import zmq
        again, t = zmq.Again, OP_TIMEOUT
        if side == "a":
            s = peers.zmq_socket(zmq.XPUB, size)
            s.setsockopt(zmq.XPUB_NODROP, 1)
            s.setsockopt(zmq.XPUB_VERBOSE, 1)
            s.bind(addr)
            seen = 0
            while seen < receivers:  # one subscription message per subscriber (XPUB_VERBOSE)
                try:
                    if s.recv()[:1] == b"\x01":
                        seen += 1
                except again:
                    raise TimeoutError(f"only {seen} of {receivers} subscribers came") from None
            snd = s.send

            def send(buf):
                try:
                    snd(buf)
                except again:
                    raise TimeoutError(f"zmq publish blocked {t} s") from None
            self.send = send
        else:
            s = peers.zmq_socket(zmq.SUB, size)
            s.connect(addr)
            s.setsockopt(zmq.SUBSCRIBE, b"")
            rcv = s.recv

            def recv():
                try:
                    return rcv()
                except again:
                    raise TimeoutError(f"zmq recv waited {t} s") from None
            self.recv = recv
        self._s = s

    def close(self):
        self._s.close()


class Iceoryx2Fanout(peers.Link):
    key = "iceoryx2"
    name = "iceoryx2 pub/sub"

    def unavailable(self):
        return peers._missing("iceoryx2")

    def create_oneway(self, ws, size, receivers):
        spec = (ws.name("iox"), size, receivers, ws.iox2_prefix, ws.iox2_root)
        return spec, [spec] * receivers, (ws.iox2_prefix, ws.iox2_root)

    def destroy(self, state):
        peers.iox2_cleanup(state)

    def open(self, spec, side):
        return _Iox2FanoutEndpoint(*spec, side)


class _Iox2FanoutEndpoint(peers.Endpoint):
    def __init__(self, name, size, receivers, prefix, root, side):
        self._node = node = peers.iox2_node(prefix, root)
        buf = peers.iox2_buffer_for(size)
        svc = peers.iox2_service(node, name, size, buf, subscribers=receivers)
        if side == "a":
            self._port = pub = peers.iox2_publisher(svc, size)
            self.send = peers.iox2_sender(pub, receivers)
            peers.iox2_wait_connected([svc], receivers)
            pub.update_connections()
        else:
            self._port = sub = svc.subscriber_builder().buffer_size(buf).create()
            self.recv = peers.iox2_receiver(sub)
            peers.iox2_wait_connected([svc], 1)
            sub.has_samples()  # connect to the publisher's data now (see peers.iox2_sender)

    def close(self):
        self._port.delete()


# ------------------------------------------------------------------------------ scenario

class Fanout(Scenario):
    name = "fanout"
    title = "Fan-out, 1 publisher to N subscribers (lossless)"
    order = 30
    metric = "msgs_per_s"
    higher_is_better = True
    ratio_note = "shmlink msg/s / peer msg/s: above 1 means shmlink is faster"

    def cases(self, opts: Any) -> list[Case]:
        out = []
        for link in (ShmlinkTopic(), ZmqPubSub(), Iceoryx2Fanout()):
            for k in FANOUT:
                c = Case(self.name, link.name, link.key, "single", list(SIZES), link=link,
                         params={"subscribers": k})
                c.skip = link.unavailable()
                out.append(c)
        return out

    def plan(self, opts: Any, size: int, mode: str = "single") -> dict:
        if opts.quick:
            return {"mode": mode, "warmup": 128, "count": 100_000, "seconds": 0.05}
        return {"mode": mode, "warmup": 4_096, "count": 5_000_000, "seconds": 1.5}

    def measure(self, case: Case, ws: H.Workspace, opts: Any, on_run) -> dict[int, list[dict]]:
        sizes = [s for s in case.sizes if s not in case.size_skips]
        return run_oneway(case.link, sizes, ws, lambda s: self.plan(opts, s), 1, on_run,
                          receivers=case.params["subscribers"])

    def summarize(self, runs: list[dict]) -> dict:
        return dict(median_of(runs, KEYS), n=sum(r["n"] for r in runs))

    def show(self, r: dict) -> str:
        return f"{H.fmt_rate(r['msgs_per_s'])} msg/s to each subscriber  ({r['n']} msgs)"

    def group(self, rec: dict) -> str:
        k = rec["params"]["subscribers"]
        return f"{H.fmt_size(rec['size'])}, {k} subscriber{'s' if k != 1 else ''}"

    def baseline(self, rec: dict) -> tuple[str, str] | None:
        return ("shmlink Topic", rec["mode"])

    def columns(self) -> list[Column]:
        return [Column("msg/s", lambda r: H.fmt_rate(r["metrics"]["msgs_per_s"])),
                Column("MB/s", lambda r: f"{r['metrics']['mb_per_s']:,.0f}")]

    def chart(self, records: list[dict], path: str) -> bool:
        from ._report import bar_chart
        return bar_chart(records, path, self.title + " (messages/s to every subscriber; higher is better)",
                         value=lambda r: r["metrics"]["msgs_per_s"],
                         ylabel="messages / s (log scale)", log=True, group=self.group)


SCENARIO = Fanout()
