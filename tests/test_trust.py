"""Hostile local users: name squatting, trusted owners, bogus lock holders, peers that flood.

A squatter is a process of another user that creates a name first; these
tests make the squatted file with a real process running as ``nobody`` (when
this run is root), or by handing a file to another uid with chown.
"""

from __future__ import annotations

import os
import pwd
import select
import subprocess
import sys
import textwrap

import pytest

import shmlink
from shmlink import segment as _seg
from support import python_env, run_python

NOBODY = None
try:
    NOBODY = pwd.getpwnam("nobody")
except KeyError:
    pass

as_root = pytest.mark.skipif(os.geteuid() != 0 or NOBODY is None,
                             reason="needs root (to act as another user) and a 'nobody' user")


@pytest.fixture(autouse=True)
def _no_process_trust(monkeypatch):
    monkeypatch.delenv("SHMLINK_TRUST", raising=False)
    saved = set(_seg._trusted)
    _seg._trusted.clear()
    yield
    _seg._trusted.clear()
    _seg._trusted.update(saved)


_SQUATTER = textwrap.dedent("""
    import os, sys, time
    import shmlink
    uid, gid, keep = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    obj = eval(sys.argv[4], {"shmlink": shmlink, "name": sys.argv[5]})
    sys.stdout.write("k")
    sys.stdout.flush()
    if keep:
        time.sleep(60)  # the test kills it
    obj.close()
""")


def _squat(kind_code: str, name: str, keep: bool = False):
    """Create ``name`` as user nobody, in a fresh interpreter running as that user.

    The interpreter starts as this user, imports shmlink (the interpreter and
    the checkout may not be readable by nobody), then drops to nobody's uid
    and gid before it creates the object.  A fresh process, not a fork of
    this one: a fork inherits whatever lock another thread of this process
    held (the allocator's, under AddressSanitizer) and can hang on it.
    Returns the still-running process when ``keep``, else None.
    """
    proc = subprocess.Popen([sys.executable, "-c", _SQUATTER, str(NOBODY.pw_uid),
                             str(NOBODY.pw_gid), "1" if keep else "0", kind_code, name],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=python_env())
    if keep:
        ready = select.select([proc.stdout], [], [], 60)[0] and proc.stdout.read(1)
        if ready == b"k":
            return proc
        proc.kill()
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"the squatter hung: {err.decode()}")
    assert proc.returncode == 0 and out == b"k", f"the squatter failed: {err.decode()}"
    return None


@as_root
@pytest.mark.parametrize("kind, make, open_", [
    ("queue", "shmlink.Queue.create(name, 4096, mode=0o666)",
     lambda n: shmlink.Queue.create_or_open(n, 4096)),
    ("segment", "shmlink.Segment.create(name, 64, mode=0o666)",
     lambda n: shmlink.Segment.open(n)),
    ("listener", "shmlink.Board.create(name, 64, mode=0o666)",
     lambda n: shmlink.Board.open(n)),
])
def test_squatted_name_is_refused(name, kind, make, open_):
    _squat(make, name)
    with pytest.raises(shmlink.ForeignOwner) as ei:
        open_(name)
    err = ei.value
    assert isinstance(err, PermissionError) and isinstance(err, shmlink.AccessDenied)
    assert err.owner_uid == NOBODY.pw_uid and err.owner == "nobody"
    assert "nobody" in str(err) and "shmlink.trust" in str(err) and "SHMLINK_TRUST" in str(err)
    shmlink.remove(name)


@as_root
def test_connect_refuses_a_squatted_listener(name):
    # the squatter listens under the name a root server would use: the secret never leaves
    squatter = _squat("shmlink.Listener.create(name, mode=0o666)", name, keep=True)
    try:
        with pytest.raises(shmlink.ForeignOwner):
            shmlink.connect(name, timeout=2)
    finally:
        squatter.kill()
        squatter.communicate(timeout=10)
        shmlink.remove(name)


@as_root
def test_trust_lets_a_named_owner_in(name, monkeypatch):
    _squat("shmlink.Queue.create(name, 4096, mode=0o666)", name)
    shmlink.trust("nobody")
    with shmlink.Queue.open(name) as q:
        q.send(b"shared on purpose")
        assert q.recv(timeout=1) == b"shared on purpose"
    _seg._trusted.clear()
    monkeypatch.setenv("SHMLINK_TRUST", f"12345, {NOBODY.pw_uid}")
    shmlink.Queue.open(name).close()
    monkeypatch.setenv("SHMLINK_TRUST", "*")
    shmlink.Queue.open(name).close()
    monkeypatch.setenv("SHMLINK_TRUST", "no-such-user-here")
    with pytest.raises(shmlink.InvalidArgument, match="SHMLINK_TRUST"):
        shmlink.Queue.open(name)
    shmlink.remove(name)


def test_file_handed_to_another_uid_is_refused(name):
    if os.geteuid() != 0:
        pytest.skip("chown to another uid needs root")
    q = shmlink.Queue.create(name, 4096)
    try:
        os.chown(q.path, 54321, 54321)
        # this process's existing mapping is not re-checked; a new process is refused
        r = run_python("import shmlink, sys\n"
                       "try:\n    shmlink.Queue.open(sys.argv[1])\n"
                       "except shmlink.ForeignOwner as e:\n    print('refused', e.owner_uid)\n",
                       name, env=python_env())
        assert r.stdout.strip() == "refused 54321", r.stderr
        shmlink.trust(54321)
        r = run_python("import shmlink, sys\nshmlink.trust(54321)\n"
                       "shmlink.Queue.open(sys.argv[1]).close(); print('ok')\n",
                       name, env=python_env())
        assert r.stdout.strip() == "ok", r.stderr
    finally:
        q.close()
        q.unlink()


def test_root_and_self_are_trusted(name):
    with shmlink.Segment.create(name, 16) as s:
        shmlink.Segment.open(name).close()
        assert os.stat(s.path).st_uid == os.geteuid()
        s.unlink()


def test_object_helpers_say_they_unpickle():
    for fn in (shmlink.Queue.recv_object, shmlink.Board.read_object,
               shmlink.Connection.recv_object, shmlink.Connection.request_object):
        doc = fn.__doc__ or ""
        assert "unpickle" in doc.lower() and "trust" in doc.lower(), fn.__qualname__


def test_unsolicited_and_duplicate_responses_are_dropped_and_counted(name):
    from support import CTX, join_all
    from workers.races import flood_server

    count = 100_000
    ready = CTX.Event()
    srv = CTX.Process(target=flood_server, args=(name, ready, count))
    srv.start()
    try:
        assert ready.wait(30)
        with shmlink.connect(name, timeout=10) as c:
            assert c.request(b"ping", timeout=60) == b"the real answer"
            # the duplicates that follow are read (and dropped) by the next receive
            with pytest.raises(shmlink.Timeout):
                c.recv(timeout=0.5)
            deadline = __import__("time").monotonic() + 30
            while c.stats()["dropped"] < count and __import__("time").monotonic() < deadline:
                try:
                    c.recv(timeout=0.2)
                except shmlink.Timeout:
                    pass
            assert c.stats()["dropped"] == count
            # nothing of it was kept
            assert len(c._pending) == 0 and len(c._inbox) == 0 and len(c._requests) == 0
    finally:
        join_all([srv], timeout=60)


@pytest.mark.parametrize("which", ["producer", "consumer"])
def test_a_forged_lock_holder_does_not_wedge_a_queue(name, which):
    from support import CTX, join_all
    from workers.races import forge_lock_holder

    with shmlink.Queue.create(name, 4096, mode=0o666) as q:
        q.send(b"before")
        p = CTX.Process(target=forge_lock_holder, args=(name, which))
        p.start()
        join_all([p], timeout=30)
        if which == "producer":
            assert q.stats()["writer_pid"] == 1
        # a fresh participant's blocking call gets through in bounded time
        r = run_python("import shmlink, sys, time\n"
                       "q = shmlink.Queue.open(sys.argv[1])\n"
                       "t = time.monotonic()\n"
                       "q.send(b'x') if sys.argv[2] == 'producer' else q.recv()\n"
                       "print('done', round(time.monotonic() - t, 2))\n",
                       name, which, env=python_env(), timeout=20)
        assert r.stdout.startswith("done"), r.stderr[-2000:]
        assert float(r.stdout.split()[1]) < 5


def test_a_genuine_slow_holder_is_waited_for(name):
    from support import CTX, join_all
    from workers.races import hold_lock

    with shmlink.Queue.create(name, 4096) as q:
        ready = CTX.Event()
        p = CTX.Process(target=hold_lock, args=(name, "producer", 1.5, ready))
        p.start()
        try:
            assert ready.wait(30)
            t = __import__("time").monotonic()
            q.send(b"x", timeout=10)  # waits for the holder, never takes its lock away
            assert __import__("time").monotonic() - t >= 1.0
            assert q.recv(timeout=1) == b"x"
        finally:
            join_all([p], timeout=30)
