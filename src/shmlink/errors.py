"""The shmlink exception hierarchy.

Every error shmlink raises is a :class:`ShmlinkError`.  Each subclass also
derives from the builtin exception it refines, so code that already catches
``FileNotFoundError`` or ``TimeoutError`` keeps working.  The failure lives in
the type; the message names the object and the next step.
"""

from __future__ import annotations

__all__ = [
    "ShmlinkError",
    "InvalidName",
    "InvalidSize",
    "SegmentNotFound",
    "SegmentExists",
    "AccessDenied",
    "ForeignOwner",
    "Timeout",
    "IncompatibleSegment",
    "WrongKind",
    "CorruptSegment",
    "CreatorDied",
    "SegmentBusy",
    "SegmentClosed",
    "OutOfRange",
    "TextTooLong",
    "TextDecodeError",
    "MessageTooLarge",
    "OwnerDied",
    "NotOwner",
    "PeerDisconnected",
    "BufferFull",
    "TooManyParticipants",
    "MessageOverwritten",
    "RemoteError",
    "SettingsMismatch",
    "InvalidArgument",
    "InvalidState",
    "BadDirectory",
    "OutOfDescriptors",
    "BridgeConfigError",
    "EndpointUnreachable",
]


class ShmlinkError(Exception):
    """Base of every error raised by shmlink."""


class InvalidName(ShmlinkError, ValueError):
    """A segment name is empty, too long, or holds characters that are not allowed."""


class InvalidSize(ShmlinkError, ValueError):
    """A size is zero, negative, or larger than the machine can map."""


class SegmentNotFound(ShmlinkError, FileNotFoundError):
    """No segment of that name exists (``open`` never creates)."""


class SegmentExists(ShmlinkError, FileExistsError):
    """A segment of that name already exists (``create`` never opens)."""


class AccessDenied(ShmlinkError, PermissionError):
    """The operating system refused access (mode bits, owner, read-only mapping)."""


class _WithErrno(ShmlinkError, OSError):
    """An OSError whose message is shmlink's, with the system's ``errno`` kept (and pickled)."""

    def __init__(self, message: str, *, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (str(self),), {"errno": self.errno})


class BadDirectory(_WithErrno):
    """The directory segments live in cannot hold them.

    ``$SHMLINK_DIR`` (or the directory of a file-backed path) is missing,
    not a directory, or on a file system that cannot create files (such as
    ``/proc``); ``$SHMLINK_DIR`` set to the empty string is an error too.
    ``errno`` says which (``ENOENT``, ``ENOTDIR``, ...); the message names
    the directory and what to do.
    """


class OutOfDescriptors(_WithErrno):
    """The process (``EMFILE``) or the system (``ENFILE``) has no file descriptor left.

    Every segment a process has open holds two (its file and its mapping).
    Close objects no longer needed, or raise the limit (``ulimit -n``,
    ``resource.setrlimit(resource.RLIMIT_NOFILE, ...)``).
    """


class ForeignOwner(AccessDenied):
    """The object's file belongs to a user this process does not trust.

    ``/dev/shm`` is writable by every local user, so anyone can create a
    name first (*squatting*) and wait for another user's ``open`` or
    ``create_or_open`` to use it.  By default a process only opens objects
    owned by its own effective user or by root; trust other owners with
    :func:`shmlink.trust` or ``$SHMLINK_TRUST`` (see the threat model in
    ``docs/design.md``).  ``owner_uid`` and ``owner`` name the file's owner.
    """

    def __init__(self, message: str, *, owner_uid: int = -1, owner: str = "") -> None:
        super().__init__(message)
        self.owner_uid = owner_uid
        self.owner = owner


class Timeout(ShmlinkError, TimeoutError):
    """A blocking call ran out of time."""


class InvalidArgument(ShmlinkError, ValueError):
    """An argument has a value the call does not accept.

    An unknown option (``wait="fast"``, ``lifetime="forever"``), a negative
    timeout, permission bits outside ``0o777``, ...  Arguments of the wrong
    *type* raise a plain :class:`TypeError` instead.
    """


class InvalidState(ShmlinkError, RuntimeError):
    """The call is not allowed in the object's current state.

    Acquiring a (non-recursive) mutex this thread already holds; starting a
    second ``on_message`` handler on one subscriber.
    """


class SettingsMismatch(ShmlinkError, ValueError):
    """``create_or_open`` found an existing object whose settings differ from those passed.

    Only settings the caller passed explicitly are compared.  The message
    names each difference; open the object with ``open()`` to take it as it
    is, or pass matching settings.
    """


class IncompatibleSegment(ShmlinkError):
    """The file is not a shmlink segment, or was made by an incompatible layout version."""


class WrongKind(IncompatibleSegment, TypeError):
    """The segment exists but holds another kind of object (a queue opened as a board, ...)."""


class CorruptSegment(ShmlinkError):
    """A shmlink header or control block holds values that cannot be right."""


class CreatorDied(ShmlinkError):
    """The process that created the segment died before it finished initialising it."""


class SegmentBusy(ShmlinkError, BufferError):
    """The mapping cannot be closed while views of it are still alive."""


class SegmentClosed(ShmlinkError, ValueError):
    """An operation on a handle that was already closed."""


class OutOfRange(ShmlinkError, IndexError):
    """An offset or length falls outside the segment's data area."""


class TextTooLong(ShmlinkError, ValueError):
    """Encoded text (with its NUL terminator) does not fit where it was to be written."""


class TextDecodeError(ShmlinkError, ValueError):
    """The bytes in the segment are not valid text in the requested encoding."""


class MessageTooLarge(ShmlinkError, ValueError):
    """A message is larger than the object's maximum message size (or the receive buffer)."""


class OwnerDied(ShmlinkError):
    """The previous holder of a mutex died while holding it.

    Raised by ``Mutex.acquire`` *after* the lock has been taken: the caller
    holds it, and the data it protects may be half-written.
    """

    def __init__(self, message: str, *, previous_pid: int = 0) -> None:
        super().__init__(message)
        self.previous_pid = previous_pid


class NotOwner(ShmlinkError, RuntimeError):
    """Releasing a mutex that this process (or thread) does not hold."""


class PeerDisconnected(ShmlinkError, ConnectionError):
    """The other end of a connection closed or died."""


class BufferFull(ShmlinkError, BufferError):
    """A connection end holds ``max_buffered`` bytes of unread messages/requests from its peer.

    Raised to the thread that was reading (for a response, a message or a
    request) when what it read past, and kept for :meth:`~shmlink.Connection.recv`
    or :meth:`~shmlink.Connection.recv_request`, reached the end's bound.
    Nothing is dropped: further frames stay in the shared ring (the peer's
    sends wait) until the application reads the kept ones; then the end works
    again.
    """


class TooManyParticipants(ShmlinkError, OSError):
    """An object's own limit on its users is reached; the message names it.

    A topic raises it when all ``max_subscribers`` subscriber slots are held
    by live subscribers.  Opening a segment never does: its participant
    table (128 slots) is only for introspection, and a process that finds
    it full is simply not listed.
    """


class MessageOverwritten(ShmlinkError):
    """A zero-copy view of a latest-mode topic was overwritten while it was open.

    Whatever was computed from the view cannot be trusted.  The message counts
    as missed; the next receive continues with the oldest message still held.
    """


class RemoteError(ShmlinkError, RuntimeError):
    """The peer's request handler raised; the message carries its traceback.

    Raised by ``Connection.request`` when the handler that ``Connection.serve``
    called for this request raised an exception (or returned something that is
    not bytes-like, or a response too large for the connection).  The
    connection stays usable.
    """


class BridgeConfigError(ShmlinkError, ValueError):
    """A bridge configuration (TOML file or command-line route) that cannot be used.

    The message names the file or option, the route and what to change.
    """


class EndpointUnreachable(ShmlinkError, ConnectionError):
    """A bridge could not open its Zenoh session: nothing answered on a ``connect``
    endpoint in time, or a ``listen`` endpoint could not be bound."""
