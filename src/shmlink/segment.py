"""Named shared memory: :class:`Segment`.

A name maps to one file ``shmlink.<name>`` in the shared-memory directory
(``/dev/shm``), or, for file-backed segments, to a regular file of the
caller's choosing.  A fixed header (see ``include/shmlink.h``) precedes the
data area, which starts one page in and holds exactly ``size`` bytes.

How the pieces fit:

* **Creation is atomic by construction.**  The creator builds the whole
  segment (header, the kind's control block) under a temporary name, marks it
  ready, and only then ``link()``\\ s it to its real name.  An opener can never
  see a half-initialised shmlink segment; a creator killed half-way leaves a
  temporary file that ``gc`` removes.  Openers still check the ready flag, for
  segments laid out in place by C programs.
* **Liveness is tracked by the kernel.**  Every process that has a segment
  open holds a shared ``flock`` on its file; the kernel drops it when the
  process dies, however it dies.  Nobody holds it <=> nobody uses the segment.
  The participant table in the header records PIDs (with process start times,
  so a reused PID is not mistaken for life) for introspection.
* **Lifetime is explicit.**  ``lifetime="persist"`` (default): the segment
  stays until :meth:`Segment.unlink` or ``shmlink rm``.  ``lifetime="auto"``:
  it is removed when its last participant closes, or, when the last one died,
  by the next ``shmlink gc``.  :meth:`Segment.close` never unlinks otherwise.
  At a clean interpreter exit every handle this process still has open is
  released as ``close()`` would (see :func:`_release_at_exit`), so ``auto``
  objects nobody else uses are removed then too.
* **A handle inherited through fork() is the child's own**: right at the
  fork the child gets its own lock on the file and its own participant slot,
  and its handles fresh per-handle state, so nothing the child does with them
  (close, exit) touches what its parent holds, and an ``auto`` object lives
  while either uses it.  Kinds that must have one reader (a connection end,
  a subscriber) refuse use in the child instead (see ``docs/design.md``,
  "Fork").
"""

from __future__ import annotations

import atexit
import dataclasses
import errno
import fcntl
import mmap
import os
import re
import secrets
import stat
import struct
import threading
import time
import weakref
from typing import Any, Callable, Iterator, Literal, TypeVar

from . import _core, _ready
from .errors import (
    AccessDenied,
    BadDirectory,
    CorruptSegment,
    CreatorDied,
    ForeignOwner,
    IncompatibleSegment,
    InvalidArgument,
    InvalidName,
    InvalidSize,
    OutOfDescriptors,
    OutOfRange,
    SegmentBusy,
    SegmentClosed,
    SegmentExists,
    SegmentNotFound,
    SettingsMismatch,
    TextDecodeError,
    TextTooLong,
    Timeout,
    WrongKind,
)

__all__ = ["Segment", "SegmentInfo", "Lifetime", "list_segments", "gc", "remove", "shm_dir",
           "KINDS", "trust"]

#: A named object's lifetime: ``"persist"`` (until unlinked) or ``"auto"``
#: (removed when its last participant closes or exits).
Lifetime = Literal["persist", "auto"]

# --- layout (struct shmlink_header in include/shmlink/segment.h, from _core) -----


def _struct_of(block: str, fields: list[str]) -> struct.Struct:
    """A little-endian ``struct.Struct`` of `fields` of a header block, in order,
    padded to their offsets (``_core.LAYOUT``: offsetof/sizeof in C)."""
    layout = _core.LAYOUT[block]
    fmt, pos = "<", 0
    for f in fields:
        off, width = layout[f]
        if off < pos:
            raise AssertionError(f"{block}.{f} is not after the previous field")
        fmt += "x" * (off - pos) + {4: "I", 8: "Q"}[width]
        pos = off + width
    return struct.Struct(fmt)


def _offset(block: str, field: str) -> int:
    """Offset of `field` within a header block (``_core.LAYOUT``)."""
    off: int = _core.LAYOUT[block][field][0]
    return off


MAGIC = _core.MAGIC
LAYOUT_VERSION = _core.LAYOUT_VERSION
DATA_OFFSET = _core.DATA_OFFSET
MAX_PARTICIPANTS = _core.MAX_PARTICIPANTS
PREFIX = "shmlink."
_TMP_MARK = ".new."  # PREFIX + _TMP_MARK + "<pid>.<rand>." + name: a segment being created

_HDR = _struct_of("header", ["magic", "layout_version", "kind", "data_offset", "data_size",
                             "total_size", "creator_pid", "flags", "creator_start",
                             "created_ns", "ready", "max_participants", "kind_version"])
_OFF_READY = _offset("header", "ready")
_OFF_PARTICIPANTS = _offset("header", "participants")
_PART = _struct_of("participant", ["pid", "start_time"])
_PART_SIZE = _core.LAYOUT_SIZE["participant"]
_PART_START = _offset("participant", "start_time")

FLAG_AUTO = 0x1

KINDS = {
    1: "segment",
    2: "mutex",
    3: "event",
    4: "queue",
    5: "topic",
    6: "board",
    7: "listener",
    8: "connection",
}
_KIND_IDS = {v: k for k, v in KINDS.items()}
#: kind name -> the class that opens it (filled as the kind modules load)
KIND_CLASSES: dict[str, type] = {}

NAME_MAX = 200
_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*\Z")


def shm_dir() -> str:
    """The directory named segments live in: ``$SHMLINK_DIR``, or ``/dev/shm`` when unset.

    Raises
    ------
    BadDirectory
        When ``$SHMLINK_DIR`` is set to the empty string.  That is taken as a
        mistake (an unset variable expanded in a script), not as "the
        default", nor as the current directory: objects meant to be kept
        apart must not silently meet in ``/dev/shm``.  (The C header agrees.)
    """
    d = os.environ.get("SHMLINK_DIR")
    if d is None:
        return "/dev/shm"
    if not d:
        raise BadDirectory("$SHMLINK_DIR is set but empty; set it to a directory (such as "
                           "/dev/shm) or unset it", errno=errno.ENOENT)
    return d


def _from_env(directory: str) -> bool:
    env = os.environ.get("SHMLINK_DIR")
    return env is not None and env != "" and os.path.abspath(env) == os.path.abspath(directory)


def _where(directory: str) -> str:
    """How a message names the directory: with ``$SHMLINK_DIR`` when that is where it came from."""
    return f"$SHMLINK_DIR ({directory})" if _from_env(directory) else directory


def _directory_problem(directory: str, creating: bool = False,
                       err: OSError | None = None) -> Exception | None:
    """Why ``directory`` cannot hold segments, or None when it looks usable.

    Called only after a call in it failed (never on the fast path): with
    ``creating``, an existing directory in which a file could not be made
    (``err``: ENOENT from /proc, EROFS, EACCES) is the problem too.
    """
    where = _where(directory)
    other = " or point $SHMLINK_DIR at another" if _from_env(directory) else ""
    try:
        st = os.stat(directory)
    except FileNotFoundError:
        return BadDirectory(f"{where} does not exist: create the directory (mkdir -p){other}",
                            errno=errno.ENOENT)
    except NotADirectoryError:
        return BadDirectory(f"{where} is not a directory (part of its path is a file): use a "
                            "directory" + (" such as /dev/shm for $SHMLINK_DIR" if other else ""),
                            errno=errno.ENOTDIR)
    except OSError as e:
        return BadDirectory(f"{where} cannot be used: {e.strerror}", errno=e.errno)
    if not stat.S_ISDIR(st.st_mode):
        return BadDirectory(f"{where} is not a directory: use a directory"
                            + (" such as /dev/shm for $SHMLINK_DIR" if other else ""),
                            errno=errno.ENOTDIR)
    if not creating or err is None:
        return None
    if err.errno in (errno.EACCES, errno.EPERM):
        return AccessDenied(f"cannot create files in {where}: permission denied; use a "
                            "directory you may write to")
    if err.errno in (errno.ENOENT, errno.EROFS):
        return BadDirectory(f"cannot create files in {where} ({err.strerror}): it is not a "
                            "place for shared memory; use /dev/shm or a tmpfs directory",
                            errno=err.errno)
    return None


def validate_name(name: object) -> str:
    """Check a segment name; return it.

    Raises
    ------
    InvalidName
        Unless the name is 1-200 characters of letters, digits, ``_ . -``,
        not starting with ``.`` or ``-``, without ``..``.
    """
    if not isinstance(name, str):
        raise InvalidName(f"segment name must be a str, not {type(name).__name__}")
    if not name:
        raise InvalidName("segment name is empty; pick a name such as 'sensor-1'")
    if len(name) > NAME_MAX:
        raise InvalidName(
            f"segment name {name[:40]!r}... is {len(name)} characters; the limit is {NAME_MAX}"
        )
    if not _NAME_RE.match(name) or ".." in name:
        raise InvalidName(
            f"segment name {name!r} is not allowed: use letters, digits, '_', '.' and '-' "
            "(no '/', NUL, '..', or a leading '.' or '-')"
        )
    return name


def _name_path(name: str) -> str:
    return os.path.join(shm_dir(), PREFIX + validate_name(name))


def _start_time(pid: int) -> int:
    return _core.process_start_time(pid)


_self_identity: tuple[int, int] | None = None


def _identity() -> tuple[int, int]:
    global _self_identity
    pid = os.getpid()
    if _self_identity is None or _self_identity[0] != pid:
        _self_identity = (pid, _start_time(pid))
    return _self_identity


# --- whose objects this process opens ----------------------------------------

#: owners trusted by :func:`trust` (uids; -1 = anyone)
_trusted: set[int] = set()


def _uid_of(owner: object) -> int:
    """A uid from a uid, a user name, or ``"*"`` (-1: anyone)."""
    if isinstance(owner, bool):
        raise TypeError("an owner is a uid (int) or a user name (str)")
    if isinstance(owner, int):
        if owner < 0:
            raise InvalidArgument(f"a uid is >= 0, not {owner}")
        return owner
    if isinstance(owner, str):
        owner = owner.strip()
        if owner == "*":
            return -1
        if owner.isdigit():
            return int(owner)
        import pwd
        try:
            return pwd.getpwnam(owner).pw_uid
        except KeyError:
            raise InvalidArgument(f"no user named {owner!r} (trust a uid or a user name)") from None
    raise TypeError(f"an owner is a uid (int) or a user name (str), not {type(owner).__name__}")


def trust(*owners: int | str) -> None:
    """Let this process open objects whose files other users own.

    By default ``open`` and ``create_or_open`` of every kind refuse an
    object whose file is owned by a user other than this process's
    effective user (or root) with :class:`ForeignOwner`: anyone can create
    a name in ``/dev/shm`` first and wait for you to use it.  Call this to
    share objects between users on purpose; ``$SHMLINK_TRUST`` (owners
    separated by commas or spaces) does the same for a whole program.

    Parameters
    ----------
    *owners : int or str
        uids, user names, or ``"*"`` for any owner (which gives up the
        protection: see the threat model in ``docs/design.md``).
    """
    _trusted.update(_uid_of(o) for o in owners)


def _env_trusted() -> set[int]:
    raw = os.environ.get("SHMLINK_TRUST", "")
    out = set()
    for item in raw.replace(",", " ").split():
        try:
            out.add(_uid_of(item))
        except (InvalidArgument, TypeError):
            raise InvalidArgument(
                f"$SHMLINK_TRUST names {item!r}, which is not a uid, a user name or '*'"
            ) from None
    return out


def _check_owner(st: os.stat_result, shown: str) -> None:
    """Refuse a file owned by a user this process does not trust (ForeignOwner)."""
    uid = st.st_uid
    me = os.geteuid()
    if uid == me or uid == 0:
        return
    trusted = _trusted | _env_trusted()
    if uid in trusted or -1 in trusted:
        return
    try:
        import pwd
        user = pwd.getpwuid(uid).pw_name
    except (KeyError, ImportError):
        user = str(uid)
    raise ForeignOwner(
        f"segment {shown!r} belongs to user {user!r} (uid {uid}), not to this process's "
        f"user (uid {me}): anyone can create a name first, so it is not opened; if that "
        f"user is meant to share it, call shmlink.trust({user!r}) or set "
        f"SHMLINK_TRUST={user}",
        owner_uid=uid, owner=user)


# --- lock words that name a process outside the segment ----------------------


def _flock_holders(dev: int, ino: int) -> set[int] | None:
    """PIDs that hold a ``flock`` on the file (dev, ino), from ``/proc/locks``.

    None if the kernel's table cannot be read (then nobody is judged).  The
    PID of a flock is the process that took it; a child that inherited the
    open file through fork() holds it too, without being listed.
    """
    want = f"{os.major(dev):02x}:{os.minor(dev):02x}:{ino}"
    out = set()
    try:
        with open("/proc/locks") as f:
            for line in f:
                parts = line.split()
                # "1: FLOCK  ADVISORY  WRITE 1234 00:1b:35758 0 EOF" ("->" marks waiters)
                if len(parts) >= 6 and parts[1] == "FLOCK" and parts[5] == want:
                    try:
                        out.add(int(parts[4]))
                    except ValueError:
                        pass
    except OSError:
        return None
    return out


def _parent_pid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


_LOCK_OWNER = _core.LAYOUT["lock"]["owner"][0]
_LOCK_OWNER_START = _core.LAYOUT["lock"]["owner_start"][0]


def live_lock_holder(mem: Any, off: int) -> tuple[int, int] | None:
    """(pid, start) of the live process recorded as holding the robust lock at ``off``;
    None when the lock is free or its recorded holder is dead."""
    pid = mem.load32(off + _LOCK_OWNER)
    start = mem.load64(off + _LOCK_OWNER_START)
    if pid == 0 or not _core.process_alive(pid, start):
        return None
    return (pid, start)


def forged_lock_holder(mem: Any, off: int, identity: tuple[int, int]) -> tuple[int, int] | None:
    """(pid, start) of a lock's recorded holder if it cannot be a participant, else None.

    A robust lock's holder is a process that has the segment open, so it
    (or, through fork, an ancestor of it) holds the file's ``flock``.  A
    live process recorded as the holder that does not -- PID 1 written
    into the owner word by someone with write access -- cannot be doing
    the work the lock guards: it was forged.  Dead holders are left to the
    lock's own take-over.  None when the kernel's lock table is unreadable.
    """
    holder = live_lock_holder(mem, off)
    if holder is None:
        return None
    pid, start = holder
    holders = _flock_holders(*identity)
    if holders is None:
        return None
    p = pid
    for _ in range(64):
        if p in holders:
            return None
        p = _parent_pid(p)
        if p <= 0:
            break
    return (pid, start)


def clear_forged_lock(mem: Any, off: int, holder: tuple[int, int]) -> bool:
    """Free a lock still recorded as held by a forged ``holder``; True if freed.

    Clears the start time, then the owner word, each by CAS against the
    forged values (a genuine acquirer that took the lock meanwhile keeps
    it), and wakes one waiter.
    """
    pid, start = holder
    if not mem.cas64(off + 8, start, 0):
        return False
    if not mem.cas32(off, pid, 0):
        return False
    mem.wake32(off)
    return True


# --- header parsing ---------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Header:
    kind: int
    data_size: int
    total_size: int
    creator_pid: int
    flags: int
    creator_start: int
    created_ns: int
    ready: int
    kind_version: int


def _parse_header(raw: bytes, file_size: int, where: str) -> _Header:
    """Validate a header read from untrusted memory."""
    if len(raw) >= 8 and int.from_bytes(raw[:8], "little") == MAGIC and (
            len(raw) < _HDR.size or file_size < DATA_OFFSET):
        raise CorruptSegment(
            f"{where} is truncated to {file_size} bytes (a shmlink header is {DATA_OFFSET}); "
            "remove it and create it again"
        )
    if len(raw) < _HDR.size or file_size < DATA_OFFSET:
        raise IncompatibleSegment(
            f"{where} is {file_size} bytes, too small to be a shmlink segment; "
            "it was not made by shmlink: remove it or use another name"
        )
    (magic, version, kind, data_offset, data_size, total_size, creator_pid, flags,
     creator_start, created_ns, ready, max_parts, kind_version) = _HDR.unpack_from(raw)
    if magic != MAGIC:
        raise IncompatibleSegment(
            f"{where} is not a shmlink segment (bad magic 0x{magic:016x}); "
            "another program owns this file: use another name"
        )
    if version != LAYOUT_VERSION:
        raise IncompatibleSegment(
            f"{where} has layout version {version}, this shmlink speaks {LAYOUT_VERSION}; "
            "use the same shmlink version on both sides"
        )
    if kind not in KINDS:
        raise CorruptSegment(f"{where} has an unknown kind {kind}; the header is corrupt")
    if data_offset != DATA_OFFSET or max_parts != MAX_PARTICIPANTS:
        raise CorruptSegment(
            f"{where} has data_offset {data_offset} / {max_parts} participant slots; "
            "the header is corrupt: remove the segment and recreate it"
        )
    if data_size <= 0 or total_size != DATA_OFFSET + data_size or total_size != file_size:
        raise CorruptSegment(
            f"{where} header says {data_size} data bytes ({total_size} total) but the file "
            f"has {file_size}; the segment is corrupt or truncated: remove it and recreate it"
        )
    return _Header(kind, data_size, total_size, creator_pid, flags, creator_start,
                   created_ns, ready, kind_version)


# --- the process-local registry of mappings ----------------------------------


class _Mapping:
    """One open file and its mapping, shared by every handle of this process."""

    def __init__(self, key: str, path: str, fd: int, mm: mmap.mmap, header: _Header,
                 readonly: bool) -> None:
        self.key = key
        self.path = path
        self.fd = fd
        self.mm = mm
        self.header = header
        self.readonly = readonly
        self.memory = _core.Memory(mm)
        self.refs = 0
        self.slot = -1
        self.pid = os.getpid()  # the process that owns fd's lock and the slot
        st = os.fstat(fd)
        self.identity = (st.st_dev, st.st_ino)
        self.detached = False
        # fork: whether fd's lock was moved off the description the mmap's own
        # dup shares, and the description prepared for the next child
        self.lock_split = False
        self.fork_fd = -1

    def register(self) -> None:
        """Claim a participant slot (read-write mappings only), if one is free.

        The table is for introspection (``shmlink ls``, :meth:`participants`)
        and for ``gc`` to notice participants that died without closing;
        liveness itself is the kernel's ``flock``.  So a full table (more
        than 128 processes) never refuses an open: the process is simply
        not listed.  Each kind's own limits (a topic's ``max_subscribers``)
        are the only ones that refuse, and their errors name them.
        """
        if self.readonly:
            return
        pid, start = _identity()
        mem = self.memory
        for attempt in range(2):
            for i in range(MAX_PARTICIPANTS):
                off = _OFF_PARTICIPANTS + _PART_SIZE * i
                cur = mem.load32(off)
                if cur == 0 or (attempt and not _core.process_alive(cur, mem.load64(off + _PART_START))):
                    if mem.cas32(off, cur, pid):
                        mem.store64(off + _PART_START, start)
                        self.slot = i
                        return

    def unregister(self) -> None:
        if self.slot >= 0 and not self.mm.closed:
            off = _OFF_PARTICIPANTS + _PART_SIZE * self.slot
            pid, _ = _identity()
            self.memory.cas32(off, pid, 0)
            self.slot = -1


_registry: dict[str, _Mapping] = {}
_registry_lock = threading.RLock()
#: every handle made by _wrap, so that the exit hook can find those still open
_live: "weakref.WeakSet[_Named]" = weakref.WeakSet()


# --- fork (docs/design.md "Fork") ------------------------------------------------
#
# A handle inherited through fork() is the child's, as if the child had opened
# it.  The kernel's "in use" test is a shared flock, which belongs to an open
# file description, and fork() shares those: the child would hold the parent's
# lock, not its own.  So before fork() the parent opens one more description of
# every file it has mapped (through /proc/self/fd, which works for unlinked
# files too) and locks it; the child puts it in place of its inherited one
# (same fd number) and the parent closes its copy.  From the fork on, each
# process holds its own lock, with no moment in between.  Python's mmap keeps a
# dup of the fd it was made from, which the child inherits as well: so the
# first fork also moves the parent's own lock onto a fresh description,
# leaving the mmap's dup unlocked (or that dup would keep "in use" true in the
# child after the parent closed).


def _lock_new_description(m: _Mapping) -> int:
    """A new open file description of ``m``'s file, holding a shared flock."""
    fd = os.open(f"/proc/self/fd/{m.fd}",
                 (os.O_RDONLY if m.readonly else os.O_RDWR) | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != m.identity:
            raise OSError(errno.ESTALE, "fd no longer refers to the segment")
        # never blocks: our own shared lock excludes every exclusive one
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _split_lock(m: _Mapping) -> None:
    """Move this process's lock on ``m`` off the description its mmap's dup shares."""
    new = _lock_new_description(m)
    old = -1
    try:
        old = os.dup(m.fd)
        os.dup2(new, m.fd, inheritable=False)  # m.fd now names the new, locked one
        fcntl.flock(old, fcntl.LOCK_UN)  # the mmap's dup: no lock any more
    finally:
        os.close(new)
        if old >= 0:
            os.close(old)
    m.lock_split = True


def _open_mappings() -> list[_Mapping]:
    """The mappings this process's open handles use (each once)."""
    seen: dict[int, _Mapping] = {}
    for m in list(_registry.values()):
        seen[id(m)] = m
    try:
        handles = list(_live)
    except Exception:
        handles = []
    for h in handles:
        m = h._map
        if not h._closed and m is not None:
            seen.setdefault(id(m), m)
    return [m for m in seen.values()
            if not m.detached and m.refs > 0 and not m.mm.closed]


_fork_locked = False
#: the mappings _before_fork prepared a description for (fork_fd >= 0)
_fork_prepared: list[_Mapping] = []


def _before_fork() -> None:
    global _fork_locked
    # no open() or close() half-way through while the child is made
    _fork_locked = _registry_lock.acquire(timeout=1.0)
    pid = os.getpid()
    for m in _open_mappings():
        if m.pid != pid:
            continue  # inherited and not ours: the child gets it as we have it
        try:
            if not m.lock_split:
                _split_lock(m)
            m.fork_fd = _lock_new_description(m)
            _fork_prepared.append(m)
        except Exception:
            m.fork_fd = -1  # (no /proc): the child shares the parent's, as before


def _after_fork_in_parent() -> None:
    global _fork_locked
    for m in _fork_prepared:
        try:
            os.close(m.fork_fd)  # the child's now: its lock stays held there
        except OSError:
            pass
        m.fork_fd = -1
    _fork_prepared.clear()
    if _fork_locked:
        _fork_locked = False
        _registry_lock.release()


def _after_fork_in_child() -> None:
    """Make every inherited mapping the child's own; then each inherited handle."""
    global _registry_lock, _fork_locked
    _registry_lock = threading.RLock()
    _fork_locked = False
    pid = os.getpid()
    adopted = set()
    prepared = list(_fork_prepared)
    _fork_prepared.clear()
    for m in prepared:
        fd, m.fork_fd = m.fork_fd, -1
        if m.detached:  # closed by another thread just before the fork
            os.close(fd)
            continue
        try:
            # Replaces the parent's description under the same number: its
            # lock is the parent's again alone, the new one's is ours.
            os.dup2(fd, m.fd, inheritable=False)
        except OSError:
            continue
        finally:
            os.close(fd)
        m.pid = pid
        m.lock_split = True
        m.slot = -1  # the parent's slot stays the parent's
        m.__dict__.pop("mutex_thread", None)  # the parent's threads are not here
        try:
            m.register()
        except Exception:
            pass  # all slots held: the child just does not show in participants()
        adopted.add(id(m))
    for key, m in list(_registry.items()):
        if id(m) not in adopted:
            del _registry[key]  # an open() here maps it afresh
    try:
        handles = list(_live)
    except Exception:
        handles = []
    for h in handles:
        if not h._closed and h._map is not None and not h._map.mm.closed:
            try:
                h._fork_child()
            except Exception:
                pass


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                    after_in_child=_after_fork_in_child)


def _os_error(err: OSError, what: str, name: str, *, path: str | None = None,
              creating: bool = False) -> Exception:
    """The typed error for ``err`` from a system call on ``what name``'s file.

    ``path`` (the file the call was about) lets a missing or unusable
    directory be told apart from a missing segment; ``creating`` says the
    call made a new file in that directory.
    """
    if path is not None and err.errno in (errno.ENOENT, errno.ENOTDIR, errno.EACCES,
                                          errno.EPERM, errno.EROFS):
        problem = _directory_problem(os.path.dirname(path) or ".", creating, err)
        if problem is not None:
            return problem
    if err.errno in (errno.EMFILE, errno.ENFILE):
        return _out_of_descriptors(err, what, name)
    if err.errno == errno.ENAMETOOLONG:
        return _name_too_long(what, name, path)
    if err.errno == errno.EISDIR:
        return IncompatibleSegment(f"{what} {name!r} is a directory, not a shmlink segment: "
                                   "remove it (rmdir) or use another name")
    if err.errno == errno.ENOENT:
        where = ""
        if path is not None and os.environ.get("SHMLINK_DIR"):
            where = f" in {_where(os.path.dirname(path))}"
        return SegmentNotFound(f"{what} {name!r} does not exist{where}; create it first "
                               "(or check the name)")
    if err.errno == errno.EEXIST:
        return SegmentExists(f"{what} {name!r} already exists; open it, or unlink it first")
    if err.errno in (errno.EACCES, errno.EPERM):
        return AccessDenied(
            f"{what} {name!r}: permission denied ({err.strerror}); it belongs to another "
            "user or was created with a narrower mode"
        )
    if err.errno in (errno.ENOSPC, errno.EFBIG, errno.ENOMEM, errno.EINVAL):
        return InvalidSize(f"{what} {name!r}: the system cannot provide that much memory ({err.strerror})")
    return err


def _out_of_descriptors(err: OSError, what: str, name: str) -> OutOfDescriptors:
    if err.errno == errno.ENFILE:
        return OutOfDescriptors(
            f"{what} {name!r}: the system has no file descriptor left (ENFILE, see "
            "/proc/sys/fs/file-max); close objects no longer needed", errno=errno.ENFILE)
    try:
        import resource
        limit = f"the limit is {resource.getrlimit(resource.RLIMIT_NOFILE)[0]}"
    except (ImportError, OSError, ValueError):  # pragma: no cover - not on Linux
        limit = "see ulimit -n"
    return OutOfDescriptors(
        f"{what} {name!r}: this process has no file descriptor left ({limit}; each open "
        "segment holds two): close objects no longer needed, or raise the limit "
        "(ulimit -n, resource.setrlimit(RLIMIT_NOFILE))", errno=errno.EMFILE)


def _name_too_long(what: str, name: str, path: str | None) -> InvalidName:
    if path is None:
        return InvalidName(f"{what} {name!r}: the file name is too long for the system")
    directory = os.path.dirname(path) or "."
    try:
        namemax = os.statvfs(directory).f_namemax
    except OSError:
        namemax = 255
    base = len(os.fsencode(os.path.basename(path)))
    if len(name) > 40:
        name = name[:40] + "..."
    if base > namemax:
        return InvalidName(f"{what} {name!r}: the file name is {base} bytes; {directory} "
                           f"allows {namemax}: use a shorter name")
    return InvalidName(f"{what} {name!r}: the path {path[:60]!r}... is {len(os.fsencode(path))} "
                       "bytes, longer than the system allows: use a shorter path")


# --- the base of every named object --------------------------------------------

_T = TypeVar("_T", bound="_Named")


class _Named:
    """Machinery shared by every named object: open/create, registry, lifetime.

    Subclasses set ``KIND`` and override ``_attach`` / ``_detach_kind``.
    """

    # class-level defaults so close() works on a half-built object
    _map: _Mapping | None = None
    _hmem: Any = None  # this handle's own _core.Memory (see "Handle lifetime" in docs/design.md)
    _closed = True
    _name = "?"
    _readonly = False
    created = False

    KIND = "segment"

    def __init__(self, *_: Any, **__: Any) -> None:
        raise TypeError(
            f"use {type(self).__name__}.create(), .open() or .create_or_open()"
        )

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if "KIND" in cls.__dict__:
            KIND_CLASSES[cls.KIND] = cls

    # -- machinery shared by every kind --

    @classmethod
    def _create_or_open(cls: type[_T], create: Callable[[], _T], open_: Callable[[], _T],
                        settings: dict[str, Any] | None = None) -> _T:
        """Create, or open if the name exists; retry if it vanishes in between.

        The two steps are each atomic (create links the finished segment into
        place or fails), so the loop only repeats when another process removed
        the name between our failed create and our open.  ``settings`` maps
        property names to the values the caller passed (None: not passed, not
        compared); an opened object that differs raises
        :class:`SettingsMismatch` (the handle is closed first).
        """
        while True:
            try:
                return create()
            except SegmentExists:
                pass
            try:
                obj = open_()
            except SegmentNotFound:
                continue
            if settings:
                obj._check_settings(settings)
            return obj

    def _check_settings(self, settings: dict[str, Any]) -> None:
        diffs = {}
        for key, wanted in settings.items():
            if wanted is None:
                continue
            have = getattr(self, key)
            if have != wanted:
                diffs[key] = (have, wanted)
        if not diffs:
            return
        try:
            self.close()
        except Exception:
            pass
        cls = type(self).__name__
        said = "; ".join(f"{key} {_shown(have)}, not {_shown(wanted)}"
                         for key, (have, wanted) in diffs.items())
        err = SettingsMismatch(
            f"{self.KIND} {self._name!r} exists with {said}: open it with {cls}.open "
            "or pass matching settings"
        )
        err.differences = diffs  # type: ignore[attr-defined]
        raise err

    @classmethod
    def _kind_id(cls) -> int:
        return _KIND_IDS[cls.KIND]

    @classmethod
    def _create_kind(cls: type[_T], name: str | None, size: int, *, kind: int,
                     mode: int = 0o600, path: str | None = None, lifetime: str = "persist",
                     init: Callable[[mmap.mmap], None] | None = None,
                     kind_version: int = 0) -> _T:
        final, key, shown = _resolve(name, path)
        if isinstance(size, bool) or not isinstance(size, int):
            raise InvalidSize(f"segment {shown!r}: size must be an int, not {type(size).__name__}")
        if size <= 0:
            raise InvalidSize(f"segment {shown!r}: size must be at least 1 byte, not {size}")
        if size > (1 << 46):
            raise InvalidSize(f"segment {shown!r}: {size} bytes is more than this machine can map")
        if lifetime not in ("persist", "auto"):
            raise InvalidArgument(f"lifetime must be 'persist' or 'auto', not {lifetime!r}")
        if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o777:
            raise InvalidArgument(f"mode must be permission bits such as 0o600, not {mode!r}")
        directory = os.path.dirname(final) or "."
        try:
            free = os.statvfs(directory)
            # no blocks at all: a size-less tmpfs (unlimited) or a pseudo file
            # system such as /proc (creating the file will say so)
            avail = free.f_bavail * free.f_frsize if free.f_blocks else None
        except OSError:
            avail = None
        total = DATA_OFFSET + size
        if avail is not None and total > avail:
            raise InvalidSize(
                f"segment {shown!r}: {size} bytes do not fit in {directory} ({avail} bytes "
                "free); pick a smaller size or free some space"
            )
        if os.path.lexists(final):
            raise SegmentExists(f"segment {shown!r} already exists; open it, or unlink it first")
        pid, start = _identity()
        # Built under a temporary name in the same directory, linked into place
        # when ready.  In /dev/shm the name marks it for gc; for file-backed
        # segments it is a hidden file beside the target.
        tag = f"{pid}.{secrets.token_hex(4)}."
        base = os.path.basename(final)
        # (a file-backed name is cut short in it: the temporary name must fit
        # wherever the final name fits)
        tmp = os.path.join(directory, (PREFIX + _TMP_MARK + tag + base[len(PREFIX):])
                           if path is None else ("." + base[:200] + _TMP_MARK + tag.rstrip(".")))
        try:
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, mode)
        except OSError as e:
            raise _os_error(e, "segment", shown, path=tmp, creating=True) from None
        mm = None
        mapping = None
        try:
            os.fchmod(fd, mode)  # the umask must not narrow or widen what was asked
            try:
                os.posix_fallocate(fd, 0, total)  # reserve now: no SIGBUS on first touch
            except OSError as e:
                if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise _os_error(e, "segment", shown) from None
                os.ftruncate(fd, total)
            try:
                mm = mmap.mmap(fd, total, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            except OSError as e:
                raise _os_error(e, "segment", shown) from None
            flags = FLAG_AUTO if lifetime == "auto" else 0
            _HDR.pack_into(mm, 0, MAGIC, LAYOUT_VERSION, kind, DATA_OFFSET, size, total, pid,
                           flags, start, time.time_ns(), 0, MAX_PARTICIPANTS, kind_version)
            if init is not None:
                init(mm)
            fcntl.flock(fd, fcntl.LOCK_SH)
            header = _parse_header(mm[:_HDR.size], total, shown)
            mapping = _Mapping(key, final, fd, mm, header, readonly=False)
            mapping.register()
            # SYNC: ready is published by a seq-cst store; openers acquire-load it.
            mapping.memory.store32(_OFF_READY, 1)
            try:
                os.link(tmp, final)
            except OSError as e:
                raise _os_error(e, "segment", shown, path=final, creating=True) from None
        except BaseException:
            if mapping is not None:
                mapping.memory.release()
            if mm is not None:
                _close_quiet(mm)
            os.close(fd)
            raise
        finally:
            _unlink_quiet(tmp)
        with _registry_lock:
            # A stale entry for this key means the name was unlinked and
            # recreated under us: the new file is a different segment.
            old = _registry.get(key)
            if old is not None:
                _registry.pop(key)
            _registry[key] = mapping
        obj = cls._wrap(mapping, shown, created=True)
        return obj

    @classmethod
    def _open_kind(cls: type[_T], name: str | None, *, path: str | None = None,
                   readonly: bool = False, timeout: float | None = 5.0) -> _T:
        final, key, shown = _resolve(name, path)
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        with _registry_lock:
            m = _registry.get(key)
            if m is not None and not m.mm.closed and _still_linked(m):
                if m.readonly and not readonly:
                    raise AccessDenied(
                        f"segment {shown!r} is already mapped read-only in this process; "
                        "close that handle before opening it read-write"
                    )
                return cls._wrap(m, shown, created=False, readonly=readonly)
        mapping = _attach(final, key, shown, readonly, deadline)
        with _registry_lock:
            m = _registry.get(key)
            if m is not None and not m.mm.closed and _still_linked(m):
                _detach(mapping, auto_ok=False)  # another thread won the race
                return cls._wrap(m, shown, created=False, readonly=readonly)
            _registry[key] = mapping
        try:
            return cls._wrap(mapping, shown, created=False, readonly=readonly)
        except BaseException:
            with _registry_lock:
                if _registry.get(key) is mapping and mapping.refs == 0:
                    _registry.pop(key)
                    _detach(mapping, auto_ok=False)
            raise

    @classmethod
    def _wrap(cls: type[_T], mapping: _Mapping, shown: str, *, created: bool,
              readonly: bool = False) -> _T:
        kind = mapping.header.kind
        if kind != cls._kind_id():
            raise WrongKind(
                f"segment {shown!r} holds a {KINDS.get(kind, kind)}, not a {cls.KIND}; "
                f"open it with shmlink.{KINDS.get(kind, 'segment').capitalize()}.open()"
            )
        obj = object.__new__(cls)
        obj._map = mapping
        obj._name = shown
        obj._closed = False
        obj._readonly = readonly or mapping.readonly
        obj.created = created
        mapping.refs += 1
        try:
            obj._hmem = _core.Memory(mapping.mm)
            obj._hmem.label = shown
            obj._attach()
        except BaseException:
            mapping.refs -= 1
            obj._closed = True
            if obj._hmem is not None:
                obj._hmem.release()
            raise
        _live.add(obj)
        return obj

    def _attach(self) -> None:
        """Hook for kinds: set up handles on the mapped control block."""

    def _detach_kind(self) -> None:
        """Hook for kinds: release what _attach took (before the unmap)."""

    def _fork_child(self) -> None:
        """In a forked child, for each handle it inherited open: make it the child's.

        Calls other threads of the parent were making do not exist in the
        child, so the handle gets fresh C objects (no calls counted inside,
        no closing flag, no lock of Python held by a thread that is gone);
        then :meth:`_after_fork` lets the kind do the rest.
        """
        hmem = _core.Memory(self._map.mm)  # type: ignore[union-attr]
        hmem.label = self._name
        self._hmem = hmem
        # the parent's doorbells stay the parent's: close our copies of
        # their descriptors, unregister nothing; fileno() makes new ones
        _ready.close_all(self._readies, release=False)
        self._after_fork()

    def _after_fork(self) -> None:
        """Hook for kinds, in a forked child (see :meth:`_fork_child`).

        The default sets the kind's handles up afresh with :meth:`_attach`.
        A kind that a second process must not use through the same handle
        (a connection end, a subscriber) makes every call raise
        :class:`InvalidState` and its close() touch nothing shared, and sets
        ``_inherited``.
        """
        self._attach()

    #: True in a forked child for a handle that stays its parent's (see _after_fork)
    _inherited = False
    #: this handle's descriptors for fd waits, by wait ("recv", "send", ...): _ready.py
    _readies: "dict[str, _ready.Readiness] | None" = None

    def _readiness(self, wait: str, ec: int, bells: int, hint: Any,
                   extra: Any = None) -> "_ready.Readiness":
        """This handle's :class:`_ready.Readiness` for one of its waits (made once)."""
        readies = self._readies
        if readies is None:
            readies = self._readies = {}
        r = readies.get(wait)
        if r is None:
            r = readies[wait] = _ready.Readiness(self._memory, ec, bells, hint,
                                                 f"{self.KIND} {self._name!r}", extra)
        return r

    def _at_exit(self) -> None:
        """Hook for kinds: called at a clean interpreter exit while still open.

        Runs in the process that opened the handle, before its segment is
        released (:func:`_release_at_exit`).  It must not block, wait for
        other threads, unmap memory or raise: e.g. mark "closed" in shared
        memory and wake a peer.  Exceptions are swallowed.
        """

    # -- properties --

    @property
    def name(self) -> str:
        """The object's name (for file-backed segments, the file's base name)."""
        return self._name

    @property
    def path(self) -> str:
        """The file behind the object."""
        return self._mapping().path

    @property
    def mode(self) -> int:
        """Permission bits of the object's file (``0o600`` unless created wider)."""
        return os.fstat(self._mapping().fd).st_mode & 0o777

    @property
    def readonly(self) -> bool:
        """Whether this handle maps the object read-only."""
        self._mapping()
        return self._readonly

    @property
    def closed(self) -> bool:
        """True once this handle is closed."""
        return self._closed

    @property
    def lifetime(self) -> Lifetime:
        """``"persist"`` or ``"auto"``, as the creator chose."""
        return "auto" if self._mapping().header.flags & FLAG_AUTO else "persist"

    @property
    def creator_pid(self) -> int:
        """PID of the process that created the object."""
        return self._mapping().header.creator_pid

    def _mapping(self) -> _Mapping:
        if self._closed or self._map is None:
            raise SegmentClosed(f"{self.KIND} {self._name!r} is closed; open it again to use it")
        return self._map

    def participants(self) -> list[int]:
        """PIDs of the live processes attached (read-write) to this segment."""
        return _live_participants(self._mapping().memory)

    # -- lifetime --

    def close(self) -> None:
        """Detach this handle (idempotent).

        Calls of this handle waiting in other threads (or in the call a
        signal handler interrupted) are woken and raise
        :class:`SegmentClosed`; close() does not wait for them.  The mapping
        goes away when the last handle of this process closes and the last
        call inside has left.  The segment itself stays unless its lifetime
        is ``"auto"`` and this was the last participant.

        Raises
        ------
        SegmentBusy
            If views of the data (memoryviews from :attr:`Segment.buf` /
            :meth:`Segment.view`, numpy arrays made from them) are still
            alive; release them and call close() again (the handle stays open).
        """
        if self._closed or self._map is None:
            self._closed = True
            return
        m = self._map
        with _registry_lock:
            if m.refs == 1:
                _check_no_views(m)
            _ready.close_all(self._readies)  # unregister the doorbells, close their fds
            self._detach_kind()
            if self._hmem is not None:
                self._hmem.release()  # wakes this handle's waiters; never waits
            if m.refs == 1:
                _detach(m, auto_ok=True)
                if _registry.get(m.key) is m:
                    _registry.pop(m.key)
            m.refs -= 1
            self._closed = True

    def unlink(self) -> None:
        """Remove the segment's name now.

        Processes that have it open keep using it; the memory is freed when
        the last of them closes.  New ``open`` calls fail.  Works on a closed
        handle too (``close()`` then ``unlink()``), and removes only the
        segment this handle opened, never a newer one of the same name.
        """
        if self._map is None:
            raise SegmentClosed(f"{self.KIND} {self._name!r} was never opened")
        m = self._map
        try:
            st = os.stat(m.path)
            # Only the file this handle opened: the name may have been
            # unlinked and re-created by someone else since.
            if (st.st_dev, st.st_ino) == m.identity:
                os.unlink(m.path)
        except FileNotFoundError:
            pass

    def __enter__(self: _T) -> _T:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # Never blocks, raises or unlinks: at worst the mapping lives on
        # until the process exits.
        try:
            if not self._closed:
                self.close()
        except Exception:
            pass

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled by name: the receiving process opens its own mapping.
        m = self._mapping()
        is_file = not m.path.startswith(os.path.join(shm_dir(), PREFIX))
        return (_reopen, (type(self), None if is_file else self._name,
                          m.path if is_file else None, self._readonly, self._reopen_kwargs()))

    def _reopen_kwargs(self) -> dict[str, Any]:
        return {}

    def __repr__(self) -> str:
        if self._closed:
            return f"<shmlink.{type(self).__name__} {self._name!r} closed>"
        return f"<shmlink.{type(self).__name__} {self._name!r}>"

    # -- for kinds: the data area as the kind's control block --

    @property
    def _memory(self) -> Any:
        """This handle's :class:`_core.Memory`: its waits end with SegmentClosed on close()."""
        self._mapping()
        return self._hmem

    @property
    def _mm(self) -> mmap.mmap:
        return self._mapping().mm


class Segment(_Named):
    """A named block of shared memory.

    Use the named constructors :meth:`create`, :meth:`open` and
    :meth:`create_or_open`; the same name opened twice in one process shares
    one mapping.  A handle is a context manager; :meth:`close` detaches this
    handle, :meth:`unlink` removes the name.

    Attributes
    ----------
    name : str
        The segment's name (for file-backed segments, the file's base name).
    path : str
        The file behind the segment.
    size : int
        Exact size of the data area, as the creator asked.
    readonly : bool
        Whether this handle maps the segment read-only.
    created : bool
        True if this handle created the segment (``create``, or
        ``create_or_open`` when the name was free).
    """

    KIND = "segment"

    # -- constructors --

    @classmethod
    def create(cls, name: str | None, size: int, *, mode: int = 0o600, path: str | None = None,
               lifetime: Lifetime = "persist") -> "Segment":
        """Create a new segment; fail if the name exists.

        Parameters
        ----------
        name : str
            Segment name: letters, digits, ``_ . -``; at most 200 characters.
            Ignored (may be None) when ``path`` is given.
        size : int
            Exact size of the data area in bytes (>= 1).
        mode : int
            Permission bits of the file (default ``0o600``: this user only).
        path : str, optional
            Keep the segment in this regular file instead of ``/dev/shm``:
            it outlives a reboot and can live on any local filesystem.
        lifetime : {"persist", "auto"}
            ``persist``: stays until unlinked.  ``auto``: removed when the
            last participant closes (or, after a crash, by ``shmlink gc``).

        Raises
        ------
        SegmentExists, InvalidName, InvalidSize, AccessDenied
        """
        return cls._create_kind(name, size, kind=1, mode=mode, path=path, lifetime=lifetime)

    @classmethod
    def open(cls, name: str | None = None, *, path: str | None = None, readonly: bool = False,
             timeout: float | None = 5.0) -> "Segment":
        """Open an existing segment by name (or ``path``); never creates.

        Parameters
        ----------
        name : str
            The segment's name.
        path : str, optional
            Open a file-backed segment at this path instead.
        readonly : bool
            Map read-only: writes raise, the participant table is not touched.
        timeout : float or None
            How long to wait for a segment whose creator is still
            initialising it (seconds; None = forever).

        Raises
        ------
        SegmentNotFound, IncompatibleSegment, CorruptSegment, CreatorDied,
        Timeout, AccessDenied, WrongKind
        """
        return cls._open_kind(name, path=path, readonly=readonly, timeout=timeout)

    @classmethod
    def create_or_open(cls, name: str | None, size: int, *, mode: int = 0o600,
                       path: str | None = None, lifetime: Lifetime = "persist",
                       timeout: float | None = 5.0) -> "Segment":
        """Create the segment, or open it if it exists.

        ``handle.created`` tells which happened.  Parameters as for
        :meth:`create` and :meth:`open`.

        Raises
        ------
        SettingsMismatch
            If the segment exists with another ``size``.
        """
        return cls._create_or_open(
            lambda: cls.create(name, size, mode=mode, path=path, lifetime=lifetime),
            lambda: cls.open(name, path=path, timeout=timeout),
            {"size": size})

    # -- properties --

    @property
    def size(self) -> int:
        """Exact size of the data area in bytes, as the creator asked."""
        return self._mapping().header.data_size

    def __repr__(self) -> str:
        if self._closed:
            return f"<shmlink.Segment {self._name!r} closed>"
        return f"<shmlink.Segment {self._name!r} size={self.size}>"

    # -- data access --

    @property
    def buf(self) -> memoryview:
        """A zero-copy view of the whole data area.

        Release it (``with seg.buf as b:`` or ``b.release()``) before
        :meth:`close`; closing with live views, or numpy arrays made from
        them, raises :class:`SegmentBusy`.  The mapping stays valid as long
        as any of them lives.
        """
        return self.view()

    def view(self, offset: int = 0, length: int | None = None) -> memoryview:
        """A zero-copy memoryview of ``length`` bytes at ``offset`` of the data area.

        The view (and anything made from it: slices, numpy arrays) keeps the
        mapping valid; :meth:`close` raises :class:`SegmentBusy` while one lives.

        Raises
        ------
        OutOfRange
            If the range does not lie within the data area.
        """
        m = self._mapping()
        offset, length = self._range(offset, length)
        return m.memory.view(DATA_OFFSET + offset, length, self._readonly)

    def _range(self, offset: int, length: int | None) -> tuple[int, int]:
        size = self.size
        if not isinstance(offset, int) or isinstance(offset, bool):
            raise TypeError("offset must be an int")
        if offset < 0 or offset > size:
            raise OutOfRange(f"segment {self._name!r}: offset {offset} is outside 0..{size}")
        if length is None:
            length = size - offset
        if length < 0 or offset + length > size:
            raise OutOfRange(
                f"segment {self._name!r}: {length} bytes at offset {offset} overrun its "
                f"{size}-byte data area"
            )
        return offset, length

    def read(self, offset: int = 0, n: int | None = None) -> bytes:
        """Copy ``n`` bytes (default: to the end) from ``offset`` of the data area."""
        m = self._mapping()
        offset, n = self._range(offset, n)
        data = m.mm[DATA_OFFSET + offset:DATA_OFFSET + offset + n]
        if m.memory.faulted:  # the file was truncated: those were zeros (_csrc/guard.c)
            raise CorruptSegment(f"segment {self._name!r}: its file was truncated by another "
                                 f"process while mapped; remove it and create it again")
        return data

    def write(self, data: Any, offset: int = 0) -> int:
        """Copy a bytes-like object into the data area at ``offset``; returns its length.

        Raises
        ------
        OutOfRange
            If it does not fit (nothing is written).
        AccessDenied
            If the handle is read-only.
        """
        m = self._mapping()
        with memoryview(data) as src:
            src = src.cast("B") if src.format != "B" or src.ndim != 1 else src
            n = src.nbytes
            offset, n = self._range(offset, n)
            self._writable(m)
            m.mm[DATA_OFFSET + offset:DATA_OFFSET + offset + n] = src
        if m.memory.faulted:  # the file was truncated: the bytes went nowhere
            raise CorruptSegment(f"segment {self._name!r}: its file was truncated by another "
                                 f"process while mapped; remove it and create it again")
        return n

    def _writable(self, m: _Mapping) -> None:
        if self._readonly:
            raise AccessDenied(f"segment {self._name!r} is open read-only; open it with readonly=False")

    def write_text(self, text: str, encoding: str = "utf-8", offset: int = 0) -> int:
        """Write ``text`` NUL-terminated at ``offset``; returns bytes written (with the NUL).

        The terminator is one code unit of the encoding (2 bytes for UTF-16,
        4 for UTF-32), as a C program reading ``char*`` or ``wchar_t*`` expects.

        Raises
        ------
        TextTooLong
            If the encoded text and its terminator do not fit (nothing is written).
        """
        if not isinstance(text, str):
            raise TypeError(f"write_text() takes a str, not {type(text).__name__}")
        encoded = text.encode(encoding)
        unit = _code_unit(encoding)
        if "\0" in text:
            raise InvalidArgument("text holds a NUL character, which would end it early for readers")
        data = encoded + b"\0" * unit
        size = self.size
        if offset < 0 or offset + len(data) > size:
            raise TextTooLong(
                f"segment {self._name!r}: {len(encoded)} bytes of {encoding} text plus its "
                f"{unit}-byte NUL do not fit in {max(0, size - offset)} bytes at offset {offset}; "
                "shorten the text or create a larger segment"
            )
        return self.write(data, offset)

    def read_text(self, encoding: str = "utf-8", offset: int = 0, *, errors: str = "strict") -> str:
        """Read NUL-terminated text at ``offset`` (up to the end if there is no NUL).

        Raises
        ------
        TextDecodeError
            If the bytes are not valid in ``encoding`` (pass ``errors="replace"``
            to decode anyway).
        """
        m = self._mapping()
        offset, n = self._range(offset, None)
        unit = _code_unit(encoding)
        start = DATA_OFFSET + offset
        end = start + n
        if unit == 1:
            nul = m.mm.find(b"\0", start, end)
            stop = end if nul < 0 else nul
        else:
            stop = end - (n % unit)
            pos = start
            zero = b"\0" * unit
            while True:
                nul = m.mm.find(zero, pos, stop)
                if nul < 0:
                    break
                if (nul - start) % unit == 0:
                    stop = nul
                    break
                pos = nul + 1
        raw = m.mm[start:stop]
        try:
            return raw.decode(encoding, errors)
        except UnicodeDecodeError as e:
            raise TextDecodeError(
                f"segment {self._name!r}: bytes at offset {offset + e.start} are not valid "
                f"{encoding} ({e.reason}); pass the encoding the writer used, or errors='replace'"
            ) from None

    def clear(self) -> None:
        """Set every byte of the data area to zero."""
        m = self._mapping()
        self._writable(m)
        chunk = 1 << 20
        zeros = bytes(min(chunk, self.size))
        pos = 0
        while pos < self.size:
            n = min(chunk, self.size - pos)
            m.mm[DATA_OFFSET + pos:DATA_OFFSET + pos + n] = zeros[:n]
            pos += n



def _shown(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def _reopen(cls: type, name: str | None, path: str | None, readonly: bool,
            kwargs: dict[str, Any]) -> Any:
    if cls is Segment:
        return Segment.open(name, path=path, readonly=readonly)
    if path is not None:
        kwargs = dict(kwargs, path=path)
    return cls.open(name, **kwargs)


def _code_unit(encoding: str) -> int:
    enc = encoding.lower().replace("_", "-")
    if enc.startswith(("utf-16", "utf16")):
        return 2
    if enc.startswith(("utf-32", "utf32")):
        return 4
    return 1


def _resolve(name: str | None, path: str | None) -> tuple[str, str, str]:
    """(file path, registry key, name to show) of a name or a file path."""
    if path is not None:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError("path must be a str or os.PathLike")
        full = os.path.abspath(os.fspath(path))
        return full, full, os.path.basename(full)
    full = _name_path(name)  # validates
    return full, full, name  # type: ignore[return-value]


def _still_linked(m: _Mapping) -> bool:
    try:
        st = os.stat(m.path)
        return st.st_ino == os.fstat(m.fd).st_ino
    except OSError:
        return False


def _attach(final: str, key: str, shown: str, readonly: bool,
            deadline: float | None) -> _Mapping:
    """Open, lock, validate and map a segment file, waiting for it to be ready."""
    # O_NONBLOCK: opening a FIFO someone placed under our name must not block
    # (it has no effect on regular files).
    flags = (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
    while True:
        try:
            fd = os.open(final, flags)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise IncompatibleSegment(f"segment {shown!r} is a symbolic link; refusing to follow it") from None
            if e.errno in (errno.EISDIR, errno.ENXIO):
                try:
                    mode = os.lstat(final).st_mode
                except OSError:
                    mode = stat.S_IFDIR if e.errno == errno.EISDIR else stat.S_IFCHR
                raise _not_a_segment_file(shown, mode) from None
            raise _os_error(e, "segment", shown, path=final) from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise _not_a_segment_file(shown, st.st_mode)
            _check_owner(st, shown)
            _lock_shared(fd, shown, deadline)
            # The name may have been unlinked between our open and our lock
            # (an "auto" segment's last user closing, or gc, which unlinks
            # only under its exclusive lock): then this file is dead; look
            # the name up again.  Holding the shared lock, nobody can remove
            # the name for an unused segment any more.
            try:
                now = os.stat(final)
                if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
                    os.close(fd)
                    continue
            except FileNotFoundError:
                os.close(fd)
                raise SegmentNotFound(f"segment {shown!r} does not exist; create it first (or check the name)") from None
            size = st.st_size
            raw = os.pread(fd, _HDR.size, 0)
            header = _parse_header(raw, size, f"segment {shown!r}")
            prot = mmap.PROT_READ if readonly else mmap.PROT_READ | mmap.PROT_WRITE
            try:
                mm = mmap.mmap(fd, size, mmap.MAP_SHARED, prot)
            except OSError as e:
                raise _os_error(e, "segment", shown) from None
            mapping = _Mapping(key, final, fd, mm, header, readonly)
            _wait_ready(mapping, shown, deadline)
            mapping.register()
            return mapping
        except BaseException:
            m = locals().get("mapping")
            if m is not None:
                m.memory.release()
                _close_quiet(m.mm)
            try:
                os.close(fd)
            except OSError:
                pass
            raise


def _not_a_segment_file(shown: str, mode: int) -> IncompatibleSegment:
    """The error for a name that holds something other than a regular file."""
    if stat.S_ISDIR(mode):
        return IncompatibleSegment(f"segment {shown!r} is a directory, not a shmlink segment: "
                                   "remove it (rmdir) or use another name")
    what = ("a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")
    return IncompatibleSegment(f"segment {shown!r} is {what}, not a shmlink segment: "
                               "remove it or use another name")


def _lock_shared(fd: int, shown: str, deadline: float | None) -> None:
    """Take the shared flock every participant holds, within the deadline.

    An exclusive lock is held briefly by ``gc`` and by a last user removing
    an ``auto`` segment; anyone who can open the file (a read-only reader
    of a ``0o644`` segment too) can hold one for as long as they like, so
    the wait polls and honours the deadline instead of blocking in flock().
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return
    except BlockingIOError:
        pass
    pause = 0.0005
    while True:
        if deadline is not None and time.monotonic() >= deadline:
            raise Timeout(
                f"segment {shown!r}: another process holds an exclusive lock on its file "
                "(shmlink gc or a closing last user holds it for a moment; any longer is "
                "another program's doing): wait longer (timeout=) or find that process"
            )
        time.sleep(pause if deadline is None else max(0.0, min(pause, deadline - time.monotonic())))
        pause = min(pause * 2, 0.02)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass


def _wait_ready(m: _Mapping, shown: str, deadline: float | None) -> None:
    mem = m.memory
    while mem.load32(_OFF_READY) != 1:
        ready = mem.load32(_OFF_READY)
        if ready not in (0, 1):
            raise CorruptSegment(f"segment {shown!r} has ready flag {ready}; the header is corrupt")
        h = m.header
        if not _core.process_alive(h.creator_pid, h.creator_start):
            raise CreatorDied(
                f"segment {shown!r}: its creator (PID {h.creator_pid}) died before marking it "
                "ready; remove it (shmlink rm / shmlink gc) and create it again"
            )
        if deadline is not None and time.monotonic() >= deadline:
            raise Timeout(
                f"segment {shown!r} is still being initialised by PID {h.creator_pid}; "
                "wait longer (timeout=) or check that process"
            )
        slice_end = time.monotonic() + 0.05
        mem.wait32(_OFF_READY, 0, slice_end if deadline is None else min(slice_end, deadline))


#: Stands in for the mmap of a detached mapping whose unmapping was deferred.
_UNMAPPED = mmap.mmap(-1, 1)
_UNMAPPED.close()


def _check_no_views(m: _Mapping) -> None:
    if m.memory.views:
        raise SegmentBusy(
            f"segment at {m.path} still has {m.memory.views} live view(s) (memoryviews, or "
            "numpy arrays made from them); release or delete them, then close() again"
        )


def _close_quiet(mm: mmap.mmap) -> None:
    """Close a mapping on an error path; one still exported (a handle made on it that the
    error's traceback keeps alive) is unmapped when its last reference goes instead, so
    the error that got us here is the one reported, not a BufferError."""
    try:
        mm.close()
    except BufferError:
        pass


def _detach(m: _Mapping, *, auto_ok: bool) -> None:
    """Unmap and close one mapping; remove an "auto" segment if we were last.

    A handle whose calls are still inside C (closing: they were woken and
    are on their way out) holds an export of the mmap, so ``mm.close()``
    fails: then the mmap is only dropped here, and unmapped when the last
    such call releases its export and with it the last reference.
    """
    if m.pid != os.getpid():
        return  # inherited through fork and not made ours: the parent owns it
    _check_no_views(m)
    m.detached = True
    m.memory.release()
    try:
        m.mm.close()
    except BufferError:
        m.mm = _UNMAPPED  # unmapped by refcount once the last call has left
    # Participant slot: cleared through a short-lived mapping of the header.
    if m.slot >= 0 and not m.readonly:
        try:
            hm = mmap.mmap(m.fd, DATA_OFFSET, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            try:
                mem = _core.Memory(hm)
                try:
                    mem.cas32(_OFF_PARTICIPANTS + _PART_SIZE * m.slot, _identity()[0], 0)
                finally:
                    mem.release()
            finally:
                _close_quiet(hm)
        except (OSError, ValueError):
            pass
        m.slot = -1
    try:
        if auto_ok and m.header.flags & FLAG_AUTO:
            try:
                fcntl.flock(m.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pass  # others still attached
            else:
                try:
                    if os.stat(m.path).st_ino == os.fstat(m.fd).st_ino:
                        os.unlink(m.path)
                except FileNotFoundError:
                    pass
    finally:
        os.close(m.fd)


def _release_at_exit() -> None:
    """Release what this process still has open, at a clean interpreter exit.

    Runs from :mod:`atexit`.  First each still-open handle's
    :meth:`_Named._at_exit` hook (kinds tell their peers), then, for each
    mapping *this* process opened (a forked child skips its parent's), what
    ``close()`` does to the segment: free the participant slot and, for an
    ``auto`` segment no other process holds, remove its name.  The memory is
    not unmapped (daemon threads may still be inside it; the kernel unmaps
    at exit), nothing waits, and nothing raises.
    """
    pid = os.getpid()
    try:
        handles = list(_live)
    except Exception:
        handles = []
    for h in handles:
        try:
            m = h._map
            if not h._closed and m is not None and m.pid == pid and not h._inherited:
                h._at_exit()
        except Exception:
            pass
    for m in list(_registry.values()):
        if m.pid != pid:
            continue
        try:
            if m.mm.closed:
                continue
            m.unregister()
            if not m.header.flags & FLAG_AUTO:
                continue
            try:
                fcntl.flock(m.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # another process still uses it
            if os.stat(m.path).st_ino == os.fstat(m.fd).st_ino:
                os.unlink(m.path)
        except Exception:
            pass


atexit.register(_release_at_exit)


def _live_participants(mem: Any) -> list[int]:
    pids = []
    for i in range(MAX_PARTICIPANTS):
        off = _OFF_PARTICIPANTS + _PART_SIZE * i
        pid = mem.load32(off)
        if pid and _core.process_alive(pid, mem.load64(off + _PART_START)):
            pids.append(pid)
    return sorted(set(pids))


# --- listing, inspection, removal -------------------------------------------------


@dataclasses.dataclass
class SegmentInfo:
    """What :func:`list_segments` knows about one segment file.

    ``size`` is the bytes of the data area (a queue's ring plus its control
    block, ...); ``uid`` and ``mode`` are the file's owner and permission
    bits (``-1`` and ``0`` when the file could not be examined).
    """

    name: str
    path: str
    kind: str
    size: int
    creator_pid: int
    created: float
    participants: list[int]
    dead_participants: list[int]
    lifetime: str
    in_use: bool
    error: str | None = None
    uid: int = -1
    mode: int = 0

    @property
    def age(self) -> float:
        """Seconds since creation."""
        return max(0.0, time.time() - self.created) if self.created else 0.0

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["age"] = round(self.age, 3)
        return d


def _in_use(fd: int) -> bool:
    """True if any process holds a shared lock on the file (other than us)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


def inspect_path(path: str, name: str | None = None) -> SegmentInfo:
    """Read a segment file's header without attaching to it."""
    name = name or os.path.basename(path)[len(PREFIX):]
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
            return SegmentInfo(name, path, "invalid", 0, 0, 0.0, [], [], "?", False,
                               f"{path} is not a regular file; it is not a shmlink segment")
        raise _os_error(e, "segment", name, path=path) from None
    try:
        st = os.fstat(fd)
        owner = {"uid": st.st_uid, "mode": stat.S_IMODE(st.st_mode)}
        if not stat.S_ISREG(st.st_mode):
            return SegmentInfo(name, path, "invalid", 0, 0, st.st_mtime, [], [], "?", False,
                               f"{path} is not a regular file; it is not a shmlink segment",
                               **owner)
        in_use = _in_use(fd)
        try:
            h = _parse_header(os.pread(fd, _HDR.size, 0), st.st_size, f"segment {name!r}")
        except (IncompatibleSegment, CorruptSegment) as e:
            return SegmentInfo(name, path, "invalid", st.st_size, 0, st.st_mtime, [], [],
                               "?", in_use, str(e), **owner)
        table = os.pread(fd, _PART_SIZE * MAX_PARTICIPANTS, _OFF_PARTICIPANTS)
        live, dead = [], []
        for i in range(MAX_PARTICIPANTS):
            pid, start = _PART.unpack_from(table, _PART_SIZE * i)
            if pid:
                (live if _core.process_alive(pid, start) else dead).append(pid)
        return SegmentInfo(name, path, KINDS[h.kind], h.data_size, h.creator_pid,
                           h.created_ns / 1e9, sorted(set(live)), sorted(set(dead)),
                           "auto" if h.flags & FLAG_AUTO else "persist", in_use, **owner)
    finally:
        os.close(fd)


def _entries(d: str) -> list[str]:
    """The names in the segment directory ``d``, sorted; BadDirectory if it is not one."""
    try:
        return sorted(os.listdir(d))
    except OSError:
        problem = _directory_problem(d)
        if problem is not None:
            raise problem from None
        raise


def _segment_files() -> Iterator[tuple[str, str]]:
    d = shm_dir()
    entries = _entries(d)
    for entry in entries:
        if entry.startswith(PREFIX) and not entry.startswith(PREFIX + _TMP_MARK):
            yield entry[len(PREFIX):], os.path.join(d, entry)


def list_segments() -> list[SegmentInfo]:
    """Every shmlink segment in the shared-memory directory.

    Files named like segments that are not valid shmlink segments are
    listed with ``kind == "invalid"`` and an ``error``.  Raises
    :class:`BadDirectory` when the directory is missing or not one.
    """
    out = []
    for name, path in _segment_files():
        try:
            out.append(inspect_path(path, name))
        except ShmlinkErrorTypes:
            continue  # vanished or unreadable
    return out


def info(name: str) -> SegmentInfo:
    """Inspect one segment by name (see :class:`SegmentInfo`)."""
    return inspect_path(_name_path(name), name)


def remove(name: str) -> None:
    """Remove a segment's name (like :meth:`Segment.unlink`, without opening it)."""
    path = _name_path(name)
    try:
        os.unlink(path)
    except OSError as e:
        raise _os_error(e, "segment", name, path=path) from None


def gc(*, dry_run: bool = False) -> list[str]:
    """Remove segments nobody can use any more; return their names.

    Removed: segments no live process has open whose lifetime is ``auto`` or
    whose participant table names processes that died without closing, and
    leftovers of creators killed before they finished.  Kept: anything a
    live process has open, and ``persist`` segments that were closed cleanly
    (their data is meant to outlive their users).
    """
    removed = []
    d = shm_dir()
    entries = _entries(d)
    for entry in entries:
        if not entry.startswith(PREFIX):
            continue
        path = os.path.join(d, entry)
        if entry.startswith(PREFIX + _TMP_MARK):
            parts = entry[len(PREFIX + _TMP_MARK):].split(".", 2)
            try:
                pid = int(parts[0])
            except ValueError:
                continue
            if not _core.process_alive(pid, 0):
                removed.append(entry)
                if not dry_run:
                    _unlink_quiet(path)
            continue
        name = entry[len(PREFIX):]
        if _gc_one(path, dry_run):
            removed.append(name)
    return removed


def _gc_one(path: str, dry_run: bool) -> bool:
    """Remove one segment file if nobody can use it; True if it was (or would be).

    The whole decision is taken holding an exclusive ``flock`` on the file,
    and the name is unlinked while it is still held, only if the path still
    names the file that was examined.  Every opener takes a shared lock and
    then checks that the name still names the file it locked (see
    :func:`_attach`), so an open that races gc either keeps the segment
    (gc sees it in use) or fails/retries (its file is gone): nobody is left
    holding memory that nobody can find by name.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # a live process has it open
        try:
            h = _parse_header(os.pread(fd, _HDR.size, 0), st.st_size, path)
        except (IncompatibleSegment, CorruptSegment):
            return False
        if not h.flags & FLAG_AUTO:
            table = os.pread(fd, _PART_SIZE * MAX_PARTICIPANTS, _OFF_PARTICIPANTS)
            dead = False
            for i in range(MAX_PARTICIPANTS):
                pid, start = _PART.unpack_from(table, _PART_SIZE * i)
                if pid and not _core.process_alive(pid, start):
                    dead = True
                    break
            if not dead:
                return False  # persist, closed cleanly: its data outlives its users
        if dry_run:
            return True
        try:
            now = os.stat(path)
        except FileNotFoundError:
            return False
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            return False  # replaced meanwhile: not the file we examined
        try:
            _unlink_quiet(path)
        except OSError:
            return False  # another user's file in a sticky directory
        return True
    finally:
        os.close(fd)  # drops the exclusive lock: waiting openers see the name gone


def _unlink_quiet(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


ShmlinkErrorTypes = (OSError, IncompatibleSegment, CorruptSegment)
