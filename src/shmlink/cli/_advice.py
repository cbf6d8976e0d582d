"""Error messages for people at a shell: the library's next step, said as a command.

The library's messages end with advice for Python code ("open it with
shmlink.Queue.open()", "unlink it first").  At the shell the next step is a
command or an option, so :func:`advise` swaps each such ending for the
``shmlink`` command that does it.  The message's first part (what failed,
on which object) stays the library's own.
"""

from __future__ import annotations

import re
from typing import Callable

__all__ = ["advise", "PYTHON_ADVICE"]

#: What a message must not hold once advised: calls, class attributes, keyword arguments.
PYTHON_ADVICE = re.compile(r"\w\(\)|\bshmlink\.[A-Za-z_]|\b[A-Z][a-z]+\.(open|create)\b|"
                           r"\b[a-z_]+=['\"]|\bunlink\b|\.close\b")

#: The commands that use each kind of object, for "it holds a topic, not a queue".
USED_BY = {
    "segment": "`shmlink read`/`write`",
    "queue": "`shmlink send`/`recv`",
    "topic": "`shmlink pub`/`sub`",
    "board": "`shmlink board`",
    "listener": "`shmlink request`",
}

#: The option that makes each command create what it uses.
CREATE_OPTION = {"send": "--create CAPACITY", "pub": "--create CAPACITY",
                 "board": "--create CAPACITY"}

_NAME = r"'(?P<name>(?:[^'\\]|\\.)*)'"


def _not_found(m: re.Match[str], command: str) -> str:
    name = m.group("name")
    if command == "rm":
        return f"; `shmlink ls` lists what exists (pass --force to ignore names that do not)"
    if command in CREATE_OPTION:
        return f"; pass {CREATE_OPTION[command]} to create it, or check the name (`shmlink ls`)"
    if command in ("info", "read", "write", "clear", "recv", "sub"):
        return "; `shmlink ls` lists what exists"
    return f"; `shmlink ls` lists what exists ({name!r} is not there)"


def _wrong_kind(m: re.Match[str], command: str) -> str:
    kind, name = m.group("kind"), m.group("name")
    users = USED_BY.get(kind)
    use = f"; use it with {users}" if users else ""
    return f"{use} (`shmlink info {name}` shows it)"


#: (pattern of the library's message, the ending a shell user gets instead)
_RULES: list[tuple[re.Pattern[str], Callable[[re.Match[str], str], str]]] = [
    (re.compile(rf"{_NAME} does not exist(?: in [^;]*)?(?P<tail>; create it first \(or check the "
                r"name\))$"), _not_found),
    (re.compile(rf"{_NAME} already exists(?P<tail>; open it, or unlink it first)$"),
     lambda m, c: f"; remove it first with `shmlink rm {m.group('name')}`, or pick another name"),
    (re.compile(rf"{_NAME} holds an? (?P<kind>\w+), not an? \w+(?P<tail>; open it with "
                r"shmlink\.\w+\.open\(\))$"), _wrong_kind),
    (re.compile(rf"{_NAME} exists with .*(?P<tail>: open it with \w+\.open or pass matching "
                r"settings)$"),
     lambda m, c: f": leave out --create (or pass the same size) to use it as it is, or remove "
                  f"it first with `shmlink rm {m.group('name')}`"),
    (re.compile(rf"nothing listens on {_NAME}(?P<tail>; start the server \(shmlink\.listen\) "
                r"first.*)$"),
     lambda m, c: f"; start a server with `shmlink serve {m.group('name')}` first, or check "
                  "the name"),
    (re.compile(r"belongs to user '(?P<user>[^']*)'.*?(?P<tail>; if that user is meant to share "
                r"it, call shmlink\.trust\(.*)$"),
     lambda m, c: f"; if that user is meant to share it, set SHMLINK_TRUST={m.group('user')} "
                  "(comma-separated users) and run the command again"),
    (re.compile(rf"board {_NAME}: a \d+-byte value does not fit.*(?P<tail>: create the board "
                r"with a larger capacity)$"),
     lambda m, c: f": remove it (`shmlink rm {m.group('name')}`) and write again with a larger "
                  "--create CAPACITY"),
    (re.compile(r"(?: no \w+| not set| stayed \w+) within [0-9.e+-]+ s(?P<tail>)$"),
     lambda m, c: "; pass a longer --timeout, or leave it out to wait without a limit"),
    (re.compile(r"(?P<tail>; pass the encoding the writer used, or errors='replace')$"),
     lambda m, c: "; pass the writer's --encoding, or --hex or --raw for the bytes"
                  if c == "read" else "; pass the writer's --encoding, or --raw for the bytes"),
]


def advise(message: str, command: str = "") -> str:
    """``message`` with its Python advice replaced by what to do at the shell.

    Parameters
    ----------
    message : str
        An error's message (one line).
    command : str
        The sub-command that failed (``"rm"``, ``"send"`` ...): some
        advice depends on it (``rm`` has ``--force``, ``send`` has
        ``--create``).

    Returns
    -------
    str
        The message, its ending rewritten when a rule knows it.
    """
    for pattern, replace in _RULES:
        m = pattern.search(message)
        if m:
            return message[:m.start("tail")] + replace(m, command) + message[m.end("tail"):]
    return message
