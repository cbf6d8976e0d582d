"""Process harness shared by every scenario.

One *case* (a competitor in a scenario, over a list of message sizes) runs as a small group of
spawned child processes, the *roles* (client/server, sender/receiver, publisher/subscribers).
The parent process only orchestrates: it creates named resources, starts the roles, waits for
each to say it is ready, then hands them one *task* at a time (a size, a repeat index) and
collects one result per role. It never measures anything itself.

Nothing here waits forever:

- the parent waits on the control pipes *and* the children's sentinels with a deadline, so a
  child that dies or hangs ends its case with an error instead of wedging the suite;
- a child waits on its control pipe with a deadline, and every send/receive it times is given
  ``OP_TIMEOUT`` by its adapter (see ``peers.py`` for how each competitor bounds its waits);
- children are joined with a timeout, then terminated, then killed.

Payloads: every message of ``size`` bytes carries its sequence number, as a little-endian
u64, in its first *and* last 8 bytes (so a truncated or torn message is caught as well as a
lost or reordered one). The bytes in between are a fixed pseudo-random template, which the
receiver compares in full for the first and last timed message. A run ends with a short *stop
marker* (``STOP`` in head and tail, the count in between), which can never be mistaken for a
payload because every benchmarked size is at least 32 bytes.
"""
from __future__ import annotations

import glob
import importlib
import multiprocessing
import multiprocessing.connection
import os
import random
import shutil
import struct
import sys
import tempfile
import time
import traceback
from typing import Any, Iterator

CTX = multiprocessing.get_context("spawn")

#: glibc malloc settings every measured (spawned) process starts with.  By default glibc
#: moves its mmap threshold up when a large block is freed and trims the heap when its top
#: grows free, so whether a 256 KiB or 1 MiB allocation (a received 1 MiB message, the
#: receiver's joined batch) costs an mmap, page faults and an munmap depends on the
#: process's allocation history: import one more module and a case flips between two modes
#: 2x apart.  Fixed thresholds make every competitor allocate the same way in every run
#: (whatever the user's environment says wins).
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(128 << 20)}
for _k, _v in MALLOC_ENV.items():
    os.environ.setdefault(_k, _v)

#: Longest a single send or receive inside a timed loop may block before the run fails.
OP_TIMEOUT = float(os.environ.get("SHMLINK_BENCH_OP_TIMEOUT", "10"))
#: Longest the parent waits for all roles of a case to start and report ready.
READY_TIMEOUT = 60.0
#: Longest a child waits on its control pipe for the next instruction.
CONTROL_TIMEOUT = 300.0
#: Longest the parent waits for the processes to exit after ``stop``.
JOIN_TIMEOUT = 10.0

HDR = struct.Struct("<Q")
STOP = 0xFFFF_FFFF_FFFF_FFFF
STOP_SIZE = 24
MIN_SIZE = 32


#: Set by the suite's SIGINT handler. A KeyboardInterrupt raised while Python happens to run
#: a __del__ or a finalizer is swallowed ("Exception ignored in ..."); the parent also polls
#: this flag between waits, so Ctrl-C always ends the run.
STOP_REQUESTED = [False]


def check_stop() -> None:
    if STOP_REQUESTED[0]:
        raise KeyboardInterrupt


class BenchError(RuntimeError):
    """A run failed: a payload did not check, a role died or timed out."""


class PayloadError(BenchError):
    """A received message is not the one that was sent."""


# --------------------------------------------------------------------------------- payloads

_templates: dict[int, bytes] = {}


def template(size: int) -> bytes:
    """The fixed body of every ``size``-byte payload (head and tail are stamped per message)."""
    if size < MIN_SIZE:
        raise ValueError(f"payload size {size} is below the minimum of {MIN_SIZE} bytes")
    t = _templates.get(size)
    if t is None:
        t = _templates[size] = random.Random(size).randbytes(size)
    return t


def stamp(buf: bytearray, seq: int) -> None:
    """Write ``seq`` into the head and the tail of ``buf`` in place."""
    HDR.pack_into(buf, 0, seq)
    HDR.pack_into(buf, len(buf) - 8, seq)


def expected(size: int, seq: int) -> bytes:
    """The exact bytes of payload number ``seq``."""
    b = bytearray(template(size))
    stamp(b, seq)
    return bytes(b)


def stop_marker(count: int) -> bytes:
    """The short message that ends a run; it carries the number of payloads sent."""
    return HDR.pack(STOP) + HDR.pack(count) + HDR.pack(STOP)


def stop_count(msg: Any) -> int | None:
    """The count carried by a stop marker, or None when ``msg`` is not one."""
    if len(msg) == STOP_SIZE and HDR.unpack_from(msg, 0)[0] == STOP == HDR.unpack_from(msg, 16)[0]:
        return HDR.unpack_from(msg, 8)[0]
    return None


def describe_bad(msg: Any, size: int, seq: int) -> str:
    """Say how ``msg`` differs from payload ``seq`` of ``size`` bytes."""
    n = len(msg)
    if n != size:
        return f"message {seq}: length {n}, expected {size}"
    head = HDR.unpack_from(msg, 0)[0]
    tail = HDR.unpack_from(msg, n - 8)[0]
    return f"message {seq}: head sequence {head}, tail sequence {tail}"


def check_full(msg: Any, size: int, seq: int) -> None:
    """Compare every byte of ``msg`` with payload ``seq``; raise PayloadError if any differs."""
    if bytes(msg) != expected(size, seq):
        raise PayloadError(f"message {seq} of {size} bytes differs from what was sent")


def seq_sum(first: int, count: int) -> int:
    """Sum of the sequence numbers first .. first+count-1 (the end-of-run checksum)."""
    return count * first + count * (count - 1) // 2


# ------------------------------------------------------------------------------- statistics

def percentile(sorted_values: Any, q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence."""
    n = len(sorted_values)
    if n == 0:
        return float("nan")
    k = min(n - 1, max(0, int(round(q / 100.0 * n + 0.5)) - 1))
    return float(sorted_values[k])


def median(values: list[float]) -> float:
    v = sorted(values)
    n = len(v)
    if n == 0:
        return float("nan")
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2.0


def fmt_size(n: int) -> str:
    if n >= 1 << 20 and n % (1 << 20) == 0:
        return f"{n >> 20} MiB"
    if n >= 1 << 10 and n % (1 << 10) == 0:
        return f"{n >> 10} KiB"
    return f"{n} B"


def fmt_ns(ns: float) -> str:
    if ns != ns:
        return "-"
    if ns >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.1f} µs"
    return f"{ns:.0f} ns"


def fmt_rate(r: float) -> str:
    if r != r:
        return "-"
    if r >= 1e6:
        return f"{r / 1e6:.2f} M"
    if r >= 1e3:
        return f"{r / 1e3:.1f} k"
    return f"{r:.0f}"


def progress(msg: str) -> None:
    """A progress line on stderr (stdout is kept for the tables)."""
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------- workspace

class Workspace:
    """Unique names and scratch space for one suite run, and the sweep that removes them.

    Every name handed out starts with ``bench-<pid>-`` so that the sweep can never touch
    segments that belong to anyone else (the test suite runs concurrently on the same box).
    """

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.tag = f"bench-{self.pid}"
        self.tmp = tempfile.mkdtemp(prefix=f"shmlink-{self.tag}-")
        # iceoryx2 is configured to put its files under this prefix and root (see peers.py).
        self.iox2_prefix = f"iox2b{self.pid}_"
        self.iox2_root = os.path.join(self.tmp, "iceoryx2") + "/"
        # POSIX message queues live in the kernel's mqueue fs, not /dev/shm: remember them.
        self.mq_names: list[str] = []
        self._n = 0

    def name(self, label: str) -> str:
        """A fresh name made of letters, digits, ``_ . -`` only."""
        self._n += 1
        return f"{self.tag}-{label}-{self._n}"

    def path(self, label: str) -> str:
        """A fresh path inside this run's scratch directory (for ipc:// and AF_UNIX)."""
        self._n += 1
        return os.path.join(self.tmp, f"{label}-{self._n}")

    def leftovers(self) -> list[str]:
        """Files in /dev/shm that this run created and has not removed yet."""
        pats = [f"/dev/shm/shmlink.{self.tag}-*", f"/dev/shm/{self.tag}-*",
                f"/dev/shm/{self.iox2_prefix}*"]
        found: list[str] = []
        for p in pats:
            found.extend(glob.glob(p))
        return sorted(set(found))

    def sweep(self) -> list[str]:
        """Remove what a killed child may have left behind; return what was removed."""
        removed = []
        for f in self.leftovers():
            try:
                os.unlink(f)
                removed.append(f)
            except FileNotFoundError:
                pass
            except OSError as e:  # pragma: no cover - reported, never fatal
                progress(f"  warning: could not remove {f}: {e}")
        if os.path.isdir(self.iox2_root):
            shutil.rmtree(self.iox2_root, ignore_errors=True)
        if self.mq_names:
            import posix_ipc
            for n in self.mq_names:
                try:
                    posix_ipc.unlink_message_queue(n)
                    removed.append(f"mqueue:{n}")
                except posix_ipc.ExistentialError:
                    pass
            self.mq_names.clear()
        return removed

    def close(self) -> list[str]:
        removed = self.sweep()
        shutil.rmtree(self.tmp, ignore_errors=True)
        return removed


# ------------------------------------------------------------------------ child-side control

class Control:
    """A child's end of its control pipe to the parent."""

    def __init__(self, conn: multiprocessing.connection.Connection, role: str) -> None:
        self.conn = conn
        self.role = role

    def _recv(self, what: str) -> Any:
        if not self.conn.poll(CONTROL_TIMEOUT):
            raise BenchError(f"{self.role}: no {what} from the parent in {CONTROL_TIMEOUT:.0f} s")
        return self.conn.recv()

    def ready(self) -> None:
        self.conn.send(("ready", None))

    def tasks(self) -> Iterator[dict]:
        """Yield each task the parent hands out, until it says stop."""
        while True:
            msg = self._recv("task")
            if msg[0] == "stop":
                return
            if msg[0] != "run":
                raise BenchError(f"{self.role}: unexpected control message {msg[0]!r}")
            yield msg[1]

    def signal(self, what: str = "warm") -> None:
        """Tell the parent a phase is done; it relays ``go`` to the other roles."""
        self.conn.send(("signal", what))

    def wait_go(self, count: int = 1) -> None:
        """Wait until ``count`` other roles have signalled (relayed by the parent)."""
        for _ in range(count):
            msg = self._recv("go")
            if msg[0] != "go":
                raise BenchError(f"{self.role}: expected go, got {msg[0]!r}")

    def result(self, value: dict) -> None:
        self.conn.send(("result", value))


def _child_entry(target: str, role: str, spec: Any, conn: multiprocessing.connection.Connection) -> None:
    """Entry point of every child: run ``module:function(spec, Control)``."""
    ctl = Control(conn, role)
    try:
        mod, _, fn = target.partition(":")
        func = getattr(importlib.import_module(mod), fn)
        func(spec, ctl)
    except BaseException as e:  # report anything, including KeyboardInterrupt, then exit
        try:
            conn.send(("error", f"{role}: {type(e).__name__}: {e}\n{traceback.format_exc()}"))
        except Exception:
            pass
        os._exit(1)
    finally:
        try:
            conn.close()
        except Exception:
            pass


# ------------------------------------------------------------------------ parent-side driver

class Role:
    """One process of a case: a name, ``module:function`` to run, and its picklable spec."""

    def __init__(self, name: str, target: str, spec: Any, *, first: bool = False,
                 waits_go: bool = False) -> None:
        self.name = name
        self.target = target
        self.spec = spec
        self.first = first  # handed each task before the others (receivers, servers)
        self.waits_go = waits_go  # is relayed the other roles' signals (a sender)
        self.proc: Any = None
        self.conn: Any = None


class Group:
    """The running processes of one case. Use as a context manager; exit always reaps."""

    def __init__(self, roles: list[Role]) -> None:
        self.roles = sorted(roles, key=lambda r: not r.first)

    def __enter__(self) -> "Group":
        try:
            for r in self.roles:
                parent_end, child_end = CTX.Pipe(duplex=True)
                r.proc = CTX.Process(target=_child_entry, name=f"bench-{r.name}",
                                     args=(r.target, r.name, r.spec, child_end), daemon=True)
                r.proc.start()
                child_end.close()
                r.conn = parent_end
            self._collect("ready", READY_TIMEOUT)
        except BaseException:
            self._reap(graceful=False)
            raise
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self._reap(graceful=exc_type is None)

    def run(self, task: dict, timeout: float) -> dict[str, dict]:
        """Hand ``task`` to every role and return {role name: result}."""
        for r in self.roles:
            r.conn.send(("run", task))
        return self._collect("result", timeout)

    def _collect(self, kind: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        pending = {r.name: r for r in self.roles}
        got: dict[str, Any] = {}
        while pending:
            check_stop()
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"timed out after {timeout:.0f} s waiting for {kind} from "
                                 + ", ".join(sorted(pending)))
            waitables = [r.conn for r in pending.values()] + [r.proc.sentinel for r in pending.values()]
            for obj in multiprocessing.connection.wait(waitables, timeout=min(left, 0.5)):
                r = next((x for x in pending.values() if obj is x.conn or obj == x.proc.sentinel), None)
                if r is None or r.name not in pending:
                    continue
                if obj is not r.conn:
                    # Sentinel: the process ended. Drain a last message it may have sent.
                    if r.conn.poll(0):
                        obj = r.conn
                    else:
                        r.proc.join(1.0)
                        raise BenchError(f"{r.name} exited (code {r.proc.exitcode}) before {kind}")
                try:
                    msg = r.conn.recv()
                except EOFError:
                    r.proc.join(1.0)
                    raise BenchError(f"{r.name} closed its control pipe (exit code {r.proc.exitcode})")
                tag, value = msg
                if tag == "error":
                    raise BenchError(value.strip().splitlines()[0] + "\n" + value)
                if tag == "signal":
                    for other in self.roles:
                        if other is not r and other.waits_go:
                            try:
                                other.conn.send(("go", value))
                            except OSError:
                                pass  # it died; its sentinel reports that
                    continue
                if tag != kind:
                    raise BenchError(f"{r.name}: expected {kind}, got {tag}")
                got[r.name] = value
                del pending[r.name]
        return got

    def _reap(self, graceful: bool) -> None:
        for r in self.roles:
            if r.conn is not None and graceful and r.proc is not None and r.proc.is_alive():
                try:
                    r.conn.send(("stop", None))
                except OSError:
                    pass
        deadline = time.monotonic() + (JOIN_TIMEOUT if graceful else 0.5)
        for r in self.roles:
            if r.proc is None:
                continue
            r.proc.join(max(0.0, deadline - time.monotonic()))
        for r in self.roles:
            if r.proc is not None and r.proc.is_alive():
                r.proc.terminate()
                r.proc.join(2.0)
            if r.proc is not None and r.proc.is_alive():
                r.proc.kill()
                r.proc.join(2.0)
            if r.conn is not None:
                r.conn.close()
            if r.proc is not None:
                try:
                    r.proc.close()
                except ValueError:
                    pass

