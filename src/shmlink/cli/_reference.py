"""The ``--json`` keys of every command: one table, shown by ``--help`` and checked by the tests.

``JSON_KEYS`` maps a command to its keys, each with its JSON type and
meaning.  ``build_parser`` puts each command's keys in its ``--help``
epilog; ``docs/cli.md`` documents the same keys (a test compares them, and
compares each command's real output with them).  Keys are stable: a
script may rely on every key listed here being present, with this type,
whatever the other options.
"""

from __future__ import annotations

__all__ = ["JSON_KEYS", "STATE_KEYS", "MESSAGE_KEYS", "epilog", "EXIT_STATUS"]

Key = tuple[str, str, str]  # name, JSON type, meaning

OBJECT_KEYS: list[Key] = [
    ("name", "string", "the object's name"),
    ("path", "string", "its file (under /dev/shm, or $SHMLINK_DIR)"),
    ("kind", "string", "segment, queue, topic, board, mutex, event, listener, connection; "
                       "invalid for a file that is not a usable shmlink object"),
    ("size", "int", "bytes of its data area (a queue's is its ring plus control block)"),
    ("uid", "int", "the file's owner"),
    ("owner", "string", "the owner's user name (the uid, as text, when it has none)"),
    ("mode", "int", "the file's permission bits (0o600 is 384)"),
    ("creator_pid", "int", "the process that created it"),
    ("created", "float", "when it was created, seconds since the epoch"),
    ("age", "float", "seconds since it was created"),
    ("participants", "list of int", "live processes that have it open"),
    ("dead_participants", "list of int", "processes that died with it open"),
    ("lifetime", "string", "persist or auto (? when invalid)"),
    ("in_use", "bool", "some process has it open"),
    ("error", "string or null", "why it is invalid (null when it is not)"),
]

MESSAGE_KEYS: list[Key] = [
    ("length", "int", "bytes in the message"),
    ("text", "string or null", "the bytes as text (--encoding, default UTF-8); null when they "
                               "are not valid text"),
    ("base64", "string", "the bytes, base64-encoded (always present)"),
]

JSON_KEYS: dict[str, list[Key]] = {
    "ls": OBJECT_KEYS,
    "info": OBJECT_KEYS + [
        ("state", "object or null", "the object's own state (its stats(): keys by kind below); "
                                    "{} for a plain segment; null when it could not be read"),
        ("state_error", "string or null", "why state is null (the object could not be opened)"),
    ],
    "create": OBJECT_KEYS + [
        ("state", "object", "{} (a plain segment has no state of its own)"),
        ("state_error", "null", "always null"),
    ],
    "gc": [
        ("removed", "list of string", "names removed (with --dry-run: that would be removed)"),
        ("dry_run", "bool", "true when nothing was removed (--dry-run)"),
    ],
    "read": [
        ("name", "string", "the segment"),
        ("offset", "int", "where the read started"),
        ("encoding", "string", "the encoding text was decoded with"),
    ] + MESSAGE_KEYS,
    "recv": MESSAGE_KEYS,
    "sub": [
        ("seq", "int", "the message's sequence number in the topic (from 0)"),
        ("missed", "int", "messages this subscriber lost to overwriting so far (latest delivery)"),
    ] + MESSAGE_KEYS,
    "board": [("version", "int", "the value's version (each write adds one)")] + MESSAGE_KEYS,
    "request": MESSAGE_KEYS,
}

#: ``info``'s ``state`` object, by kind: the keys of each kind's ``stats()``.
STATE_KEYS: dict[str, list[Key]] = {
    "queue": [
        ("capacity", "int", "bytes of payload the ring holds"),
        ("max_message_size", "int", "the largest message it accepts"),
        ("used_bytes", "int", "storage in use now"),
        ("depth", "int", "messages in the queue now"),
        ("sent", "int", "messages sent, since creation"),
        ("received", "int", "messages received, since creation"),
        ("writer_pid", "int or null", "the sender holding the senders' lock now"),
    ],
    "topic": [
        ("delivery", "string", "lossless or latest"),
        ("capacity", "int", "bytes of payload the ring holds"),
        ("max_message_size", "int", "the largest message it accepts"),
        ("max_subscribers", "int", "subscriber slots"),
        ("used_bytes", "int", "storage holding messages now"),
        ("published", "int", "messages, since creation"),
        ("evicted", "int", "subscribers removed because their process died"),
        ("writer_pid", "int or null", "the publisher holding the publishers' lock now"),
        ("subscribers", "list of object", "one per subscriber: slot, pid, alive, lag (messages "
                                          "it has not read), missed, received"),
    ],
    "board": [
        ("capacity", "int", "the largest value, in bytes"),
        ("version", "int", "writes since creation"),
        ("length", "int", "bytes in the current value"),
        ("writer_pid", "int or null", "a writer holding the lock now"),
        ("last_writer_pid", "int or null", "the process that wrote last"),
        ("takeovers", "int", "locks taken from writers that died"),
        ("wakes", "int", "writes that woke a watcher"),
        ("armed", "bool", "a watcher waits (or died waiting)"),
    ],
    "mutex": [
        ("holder_pid", "int or null", "the process holding it"),
        ("consistent", "bool", "false after a holder died holding it, until repaired"),
        ("acquisitions", "int", "since creation"),
    ],
    "event": [
        ("set", "bool", "it is set now"),
        ("auto_reset", "bool", "a wait consumes the set"),
        ("set_count", "int", "sets since creation"),
        ("wakes", "int", "sets that woke a waiter"),
        ("armed", "bool", "a waiter waits (or died waiting)"),
    ],
    "listener": [
        ("server_pid", "int or null", "the listening process"),
        ("server_alive", "bool", "that process lives"),
        ("closed", "bool", "the server closed the listener"),
        ("capacity", "int", "bytes per direction of each connection"),
        ("backlog", "int", "connects that may wait for accept"),
        ("accepted", "int", "connections accepted, since creation"),
        ("pending", "int", "connects waiting for accept now"),
        ("clients", "list of object", "one per connection: name, client_pid, server_pid, "
                                      "accept, client_alive, client_closed, server_closed"),
    ],
    "connection": [
        ("client_pid", "int or null", "the client process"),
        ("client_alive", "bool", "it lives and has not closed its end"),
        ("client_closed", "bool", "it closed its end"),
        ("server_pid", "int or null", "the server process"),
        ("server_alive", "bool", "it lives and has not closed its end"),
        ("server_closed", "bool", "it closed its end"),
        ("accept", "string", "pending, accepted, refused ..."),
        ("client_to_server", "object", "sent, received, depth (messages, that direction)"),
        ("server_to_client", "object", "sent, received, depth"),
    ],
}

EXIT_STATUS = """\
exit status:
  0    success; also when the reader of stdout went away (`shmlink sub t | head -1`)
  1    an error: no such object, a timeout that ran out, input that is not text ...
  2    a usage error: the command's usage, then one line
  70   a bug in shmlink (please report; --debug or SHMLINK_DEBUG=1 shows the traceback)
  130  interrupted (Ctrl-C)"""


def _keys_block(title: str, keys: list[Key], indent: str = "  ") -> str:
    width = max(len(k) for k, _, _ in keys)
    lines = [title]
    for k, typ, meaning in keys:
        lines.append(f"{indent}{k:<{width}}  {typ}: {meaning}")
    return "\n".join(lines)


def epilog(command: str) -> str:
    """The ``--help`` epilog of ``command``: its JSON keys (and for ``info``, state's by kind)."""
    keys = JSON_KEYS[command]
    if command in ("ls",):
        text = _keys_block("--json: a list of objects, each with:", keys)
    elif command in ("recv", "sub", "board", "request"):
        text = _keys_block("--json: one JSON object per line, per message, with:", keys)
    else:
        text = _keys_block("--json: one object with:", keys)
    if command == "info":
        for kind, kkeys in STATE_KEYS.items():
            text += "\n" + _keys_block(f"state of a {kind}:", kkeys, indent="    ")
    return text
