"""A child process that runs ``shmlink`` command lines in-process, for the CLI fuzz test.

Run as ``python -m workers.cli FD`` with ``$SHMLINK_DIR`` set to a private
directory.  It reads requests from stdin, one JSON object a line:
``{"argv": [hex, ...], "stdin": hex}`` (each argument as the bytes a shell
would pass) or ``{"reset": true}`` (make the objects the fuzz names again,
should an earlier command have removed them), runs ``shmlink.cli.main`` on them exactly as ``python -m
shmlink`` would see them (arguments decoded with ``os.fsdecode``, stdin as a
byte stream, stdout strict UTF-8 like a pipe), and answers on file
descriptor FD: ``{"rc": int, "stderr": str}``.  A call still running after
:data:`LIMIT` seconds gets a KeyboardInterrupt (the command then exits 130,
as after Ctrl-C): a command that waits for input is not a failure.

Its own stdout and stderr are not the protocol (the ``demo`` command's child
process writes to them), so the parent may send them anywhere.
"""

from __future__ import annotations

import io
import json
import os
import signal
import sys

LIMIT = 0.3
_armed = False


def _interrupt(*_: object) -> None:
    if _armed:
        raise KeyboardInterrupt


def _run(argv: list[str], stdin: bytes) -> tuple[int, str]:
    global _armed
    from shmlink.cli import main

    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict")
    err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="backslashreplace")
    saved = sys.stdin, sys.stdout, sys.stderr
    sys.stdin = io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8")
    sys.stdout, sys.stderr = out, err
    _armed = True
    signal.setitimer(signal.ITIMER_REAL, LIMIT)
    try:
        try:
            rc = main(argv)
            _armed = False
        except SystemExit as e:  # what `python -m shmlink` would exit with
            rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except KeyboardInterrupt:  # the timer fired outside main's own handler
            rc = 130
        except BaseException as e:  # noqa: BLE001 - reported to the test, which fails
            import traceback
            err.write("escaped main: Traceback\n" + traceback.format_exc())
            rc = 999
    finally:
        _armed = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        sys.stdin, sys.stdout, sys.stderr = saved
    err.flush()
    return rc, err.buffer.getvalue().decode("utf-8", "backslashreplace")  # type: ignore[attr-defined]


def _reset() -> tuple[int, str]:
    """Segment 's', queue 'q', topic 't', board 'b' exist (as left, or new)."""
    import shmlink

    for cls, name in ((shmlink.Segment, "s"), (shmlink.Queue, "q"), (shmlink.Topic, "t"),
                      (shmlink.Board, "b")):
        try:
            cls.create_or_open(name, 4096).close()
        except shmlink.ShmlinkError as e:  # e.g. a segment the fuzz made under another kind
            shmlink.remove(name)
            cls.create(name, 4096).close()
            del e
    return 0, ""


def serve(fd: int) -> None:
    signal.signal(signal.SIGALRM, _interrupt)
    answers = os.fdopen(fd, "w", buffering=1)
    for line in sys.stdin:
        req = json.loads(line)
        if req.get("reset"):
            rc, err = _reset()
            answers.write(json.dumps({"rc": rc, "stderr": err}) + "\n")
            continue
        argv = [os.fsdecode(bytes.fromhex(a)) for a in req["argv"]]
        rc, err = _run(argv, bytes.fromhex(req["stdin"]))
        answers.write(json.dumps({"rc": rc, "stderr": err}) + "\n")


if __name__ == "__main__":
    serve(int(sys.argv[1]))
