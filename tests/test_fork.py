"""fork(): what a child may do with the handles it inherits (docs/design.md "Fork").

The contract: an inherited handle is the child's as if it had opened it (its
own file lock, its own participant slot, fresh per-handle state), except the
two kinds one process reads through: a Connection end and a Subscriber stay
the parent's, every call on them raises InvalidState in the child, and their
close() there touches nothing shared.  Whatever the child does (use the
handle, close it, drop it, exit normally or with os._exit) its parent's
objects go on working, and nothing is left in /dev/shm afterwards.

Every scenario runs in a fresh interpreter (which forks), with a timeout.
"""

from __future__ import annotations

import os
import textwrap

import pytest

from support import python_env, run_python

PRELUDE = '''
import gc, os, subprocess, sys, threading, time
import shmlink
from shmlink import InvalidState, NotOwner

name = sys.argv[1]
shm = shmlink.segment.shm_dir()


def left():
    """Our entries in /dev/shm (the object, its connections, temporary files)."""
    return sorted(e for e in os.listdir(shm) if name in e)


def fork(child):
    """Run child() in a forked child; an exception there is exit code 3."""
    pid = os.fork()
    if pid == 0:
        try:
            child()
        except SystemExit:
            raise
        except BaseException:
            import traceback
            traceback.print_exc()
            os._exit(3)
        os._exit(0)
    return pid


def reap(pid):
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"child failed: {status}"


def refused(call):
    try:
        call()
    except InvalidState as e:
        assert "fork()" in str(e), e
    else:
        raise AssertionError(f"{call} worked in a forked child")


def other_process(code):
    """Run code (with `name`) in an unrelated interpreter; its stdout."""
    r = subprocess.run([sys.executable, "-c", "import sys, shmlink; name = sys.argv[1]\\n" + code,
                        name], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def connected_pair():
    """A listener and both ends of one connection, all made here."""
    lst = shmlink.listen(name)
    got = []
    t = threading.Thread(target=lambda: got.append(lst.accept(timeout=10)))
    t.start()
    client = shmlink.connect(name, timeout=10)
    t.join()
    return lst, client, got[0]
'''

# Per kind: `make` (in the parent, before the fork; `objs` are the handles the
# child closes or drops), `use` (in the child), `check` (in the parent, after
# the child is gone: the parent's objects still work; `used` says whether the
# child ran `use`).
KINDS = {
    "segment": dict(
        make='''
obj = shmlink.Segment.create(name, 64, lifetime="auto")
obj.write(b"parent")
objs = [obj]
''',
        use='''
assert obj.read(0, 6) == b"parent"
obj.write(b"child", 8)
assert os.getpid() in obj.participants()
''',
        check='''
assert obj.read(0, 6) == b"parent"
assert obj.read(8, 5) == (b"child" if used else bytes(5))
assert os.getpid() in obj.participants(), obj.participants()
assert other_process("print(shmlink.Segment.open(name).read(0, 6))") == "b'parent'"
''',
        close="obj.close()"),
    "mutex": dict(
        make='''
obj = shmlink.Mutex.create(name, lifetime="auto")
obj.acquire(timeout=5)
objs = [obj]
''',
        use='''
assert obj.holder_pid == os.getppid()
try:
    obj.release()
except NotOwner:
    pass
else:
    raise AssertionError("the child released its parent's lock")
assert not obj.try_acquire()
''',
        check='''
assert obj.holder_pid == os.getpid()
obj.release()
assert obj.try_acquire()
obj.release()
''',
        close="obj.close()"),
    "event": dict(
        make='''
obj = shmlink.Event.create(name, lifetime="auto")
objs = [obj]
''',
        use='''
obj.set()
assert obj.wait(timeout=5)
''',
        check='''
assert obj.is_set() == used
obj.set()
assert other_process("print(shmlink.Event.open(name).wait(timeout=5))") == "True"
''',
        close="obj.close()"),
    "queue": dict(
        make='''
obj = shmlink.Queue.create(name, 4096, lifetime="auto")
obj.send(b"one")
view = obj.recv_view()  # open across the fork: the consumer lock is the parent's
data = view.__enter__()
objs = [obj]
''',
        use='''
assert bytes(data) == b"one"
view.__exit__(None, None, None)  # the parent's receive: not consumed from here
obj.send(b"child")
''',
        check='''
# the consumer lock is still the parent's: another consumer gets nothing
assert other_process("print(shmlink.Queue.open(name).try_recv())") == "None"
assert bytes(data) == b"one"
view.__exit__(None, None, None)
assert obj.stats()["received"] == 1
if used:
    assert obj.recv(timeout=5) == b"child"
assert obj.try_recv() is None
obj.send(b"two")
assert obj.recv(timeout=5) == b"two"
''',
        close="obj.close()"),
    "topic": dict(
        make='''
obj = shmlink.Topic.create(name, capacity=4096, delivery="lossless", lifetime="auto")
sub = obj.subscribe()
objs = [sub, obj]
''',
        use='''
refused(lambda: sub.recv(timeout=0))
refused(sub.try_recv)
obj.publish(b"child")
''',
        check='''
assert obj.subscriber_count == 1, obj.stats()
if used:
    assert sub.recv(timeout=5) == b"child"
obj.publish(b"parent")
assert sub.recv(timeout=5) == b"parent"
''',
        close="sub.close(); obj.close()"),
    "board": dict(
        make='''
obj = shmlink.Board.create(name, 64, lifetime="auto")
obj.write(b"parent")
objs = [obj]
''',
        use='''
assert obj.read() == b"parent"
obj.write(b"child")
''',
        check='''
assert obj.read() == (b"child" if used else b"parent")
obj.write(b"again")
assert other_process("print(shmlink.Board.open(name).read())") == "b'again'"
''',
        close="obj.close()"),
    "listener": dict(
        make='''
obj = shmlink.listen(name)
objs = [obj]

def round_trip(lst):
    got = []
    t = threading.Thread(target=lambda: got.append(shmlink.connect(name, timeout=10)))
    t.start()
    server = lst.accept(timeout=10)
    t.join()
    client = got[0]
    client.send(b"ping")
    assert server.recv(timeout=5) == b"ping"
    client.close()
    server.close()
''',
        use='''
round_trip(obj)  # a forked child may accept (a pre-forked server)
''',
        check='''
assert os.path.exists(obj.path)
round_trip(obj)
''',
        close="obj.close()"),
    "connection": dict(
        make='''
lst, obj, server = connected_pair()
objs = [obj, server, lst]
''',
        use='''
refused(lambda: obj.send(b"x"))
refused(lambda: obj.recv(timeout=0))
refused(obj.try_recv)
refused(lambda: obj.request(b"r", timeout=1))
refused(lambda: server.recv_request(timeout=0))
refused(lambda: server.reply(1, b""))
refused(lambda: server.serve(lambda b: b))
assert not obj.closed and not obj.peer_closed
''',
        check='''
assert not obj.peer_closed and not server.peer_closed
obj.send(b"to server")
assert server.recv(timeout=5) == b"to server"
server.send(b"to client")
assert obj.recv(timeout=5) == b"to client"
t = threading.Thread(target=server.serve, args=(lambda b: b.upper(),))
t.start()
assert obj.request(b"abc", timeout=5) == b"ABC"
server.stop()
t.join(10)
assert os.path.exists(lst.path)
''',
        close="obj.close(); server.close(); lst.close()"),
}

# What the child does before it goes, and how it goes.
ENDINGS = {
    "exit": "sys.exit(0)",  # atexit handlers and interpreter finalisation run
    "os_exit": "os._exit(0)",
    "use": "{use}\nsys.exit(0)",
    "close": "for o in objs:\n    o.close()\nsys.exit(0)",
    "drop": "objs.clear()\nfor k in list(globals()):\n    if k in {names}:\n        del globals()[k]\n"
            "gc.collect()\nsys.exit(0)",
}

_HANDLE_NAMES = ("obj", "sub", "lst", "server", "view", "data")


def _script(kind: str, ending: str) -> str:
    k = KINDS[kind]
    child = ENDINGS[ending].format(use=k["use"].strip(), names=repr(set(_HANDLE_NAMES)))
    return PRELUDE + k["make"] + f'''
used = {ending == "use"!r}


def child():
{textwrap.indent(child, "    ")}


reap(fork(child))
assert left(), "the child removed its parent's objects"
{k["check"]}
{k["close"]}
assert not left(), left()
print("ok")
'''


@pytest.mark.parametrize("ending", list(ENDINGS))
@pytest.mark.parametrize("kind", list(KINDS))
def test_what_a_forked_child_does_leaves_its_parents_objects_working(kind, ending, name):
    r = run_python(_script(kind, ending), name, timeout=90, env=python_env())
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout + r.stderr
    assert "Traceback" not in r.stderr, r.stderr


# --- lifetime="auto": the object lives while any process uses it ----------------

AUTO = {
    "segment": ("shmlink.Segment.create(name, 64, lifetime='auto')", "obj.write(b'child')",
                "print(shmlink.Segment.open(name).read(0, 5))", "b'child'"),
    "mutex": ("shmlink.Mutex.create(name, lifetime='auto')", "obj.acquire(timeout=5)",
              "print(shmlink.Mutex.open(name).holder_pid > 0)", "True"),
    "event": ("shmlink.Event.create(name, lifetime='auto')", "obj.set()",
              "print(shmlink.Event.open(name).is_set())", "True"),
    "queue": ("shmlink.Queue.create(name, 4096, lifetime='auto')", "obj.send(b'child')",
              "print(shmlink.Queue.open(name).recv(timeout=5))", "b'child'"),
    "topic": ("shmlink.Topic.create(name, capacity=4096, lifetime='auto')",
              "obj.publish(b'child')",
              "print(shmlink.Topic.open(name).published)", "1"),
    "board": ("shmlink.Board.create(name, 64, lifetime='auto')", "obj.write(b'child')",
              "print(shmlink.Board.open(name).read())", "b'child'"),
}


@pytest.mark.parametrize("ending", ["close", "exit", "os_exit"])
@pytest.mark.parametrize("kind", list(AUTO))
def test_an_auto_object_outlives_its_parents_close_while_a_forked_child_uses_it(kind, ending,
                                                                               name):
    make, use, probe, expect = AUTO[kind]
    end = {"close": "obj.close()\nos._exit(0)", "exit": "sys.exit(0)",
           "os_exit": "os._exit(0)"}[ending]
    code = PRELUDE + f'''
obj = {make}
path = obj.path
go_r, go_w = os.pipe()
done_r, done_w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(go_w)
    os.close(done_r)
    os.read(go_r, 1)  # the parent has closed its handle by now
    {use}
    os.write(done_w, b"x")
    os.read(go_r, 1)
    {textwrap.indent(end, "    ").strip()}
os.close(go_r)
os.close(done_w)
obj.close()  # the child still uses it: the name must stay
assert os.path.exists(path), "the parent's close removed an object its child uses"
os.write(go_w, b"x")
os.read(done_r, 1)
assert other_process({probe!r}) == {expect!r}
os.write(go_w, b"x")
reap(pid)
if {ending!r} == "os_exit":
    # it died without releasing: the kernel dropped its lock, and the name
    # stays for `shmlink gc`, which finds it unused
    assert not shmlink.segment.info(name).in_use
    shmlink.segment.remove(name)
assert not left(), left()
print("ok")
'''
    r = run_python(code, name, timeout=90, env=python_env())
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout + r.stderr



# --- threads and fork: calls other threads were making are not the child's ------

# Per kind: `make`, `block` (a parent thread blocks in this call across the
# fork; it stores its result in `got`), `child` (in the child: use what it
# may), `unblock` (the parent, after the child is gone: lets the thread
# finish), `expect` (what the thread got), `close`.
THREADED = {
    "queue": dict(
        make='obj = shmlink.Queue.create(name, 4096, lifetime="auto")',
        block="got.append(obj.recv(timeout=30))",
        child="obj.send(b'child')\nassert obj.stats()['sent'] == 1",
        unblock="", expect="[b'child']", close="obj.close()"),
    "mutex": dict(
        make='obj = shmlink.Mutex.create(name, lifetime="auto")\nobj.acquire(timeout=5)',
        block="got.append(obj.acquire(timeout=30))\nobj.release()",
        child="assert not obj.try_acquire()\nassert obj.holder_pid == os.getppid()",
        unblock="obj.release()", expect="[True]", close="obj.close()"),
    "event": dict(
        make='obj = shmlink.Event.create(name, lifetime="auto")',
        block="got.append(obj.wait(timeout=30))",
        child="obj.set()", unblock="", expect="[True]", close="obj.close()"),
    "topic": dict(
        make='obj = shmlink.Topic.create(name, capacity=4096, lifetime="auto")\n'
             'sub = obj.subscribe()',
        block="got.append(sub.recv(timeout=30))",
        child="refused(lambda: sub.recv(timeout=0))\nobj.publish(b'child')\nsub.close()",
        unblock="", expect="[b'child']", close="sub.close(); obj.close()"),
    "listener": dict(
        make="obj = shmlink.listen(name)",
        block="s = obj.accept(timeout=30)\ngot.append(s.recv(timeout=10))\ns.close()",
        # white-box, as nothing else shows it without a race: no lock of the
        # thread that is not here is held in the child
        child="assert not obj._alock.locked()",
        unblock="c = shmlink.connect(name, timeout=10)\nc.send(b'hi')\nt.join(30)\nc.close()",
        expect="[b'hi']", close="obj.close()"),
    "connection": dict(
        make="lst, obj, server = connected_pair()",
        block="got.append(server.recv(timeout=30))",
        child="refused(lambda: server.recv(timeout=0))\nrefused(lambda: obj.send(b'x'))",
        unblock="obj.send(b'parent')", expect="[b'parent']",
        close="obj.close(); server.close(); lst.close()"),
}


@pytest.mark.parametrize("kind", list(THREADED))
def test_a_fork_while_another_thread_is_inside_a_call(kind, name):
    k = THREADED[kind]
    code = PRELUDE + k["make"] + f'''
got = []


def blocked():
{textwrap.indent(k["block"], "    ")}


t = threading.Thread(target=blocked)
t.start()
time.sleep(0.3)  # inside the call by now


def child():
{textwrap.indent(k["child"], "    ")}
    for h in [v for v in globals().values() if isinstance(v, shmlink.segment._Named)]:
        t0 = time.monotonic()
        h.close()  # no call of the parent's threads is waited for
        assert time.monotonic() - t0 < 0.5, (h, time.monotonic() - t0)
    sys.exit(0)


reap(fork(child))
{k["unblock"]}
t.join(30)
assert not t.is_alive()
assert got == {k["expect"]}, got
{k["close"]}
assert not left(), left()
print("ok")
'''
    r = run_python(code, name, timeout=90, env=python_env())
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout + r.stderr
