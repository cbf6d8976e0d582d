"""The shmlink command, run as a real subprocess like a shell script would."""

from __future__ import annotations

import base64
import json
import os
import re
import select
import shlex
import signal
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import shmlink
from support import python_env, wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sh(*args: str, input: bytes | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shmlink", *args], input=input,
                          capture_output=True, timeout=timeout, cwd=ROOT)


def ok(*args: str, input: bytes | None = None) -> str:
    r = sh(*args, input=input)
    assert r.returncode == 0, r.stderr.decode()
    return r.stdout.decode()


def assert_user_error(r: subprocess.CompletedProcess, *words: str) -> None:
    err = r.stderr.decode()
    assert r.returncode == 1, err
    assert err.startswith("shmlink: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for w in words:
        assert w in err, err


def test_create_write_read_clear_rm(name, tmp_path):
    assert "1024 bytes" in ok("create", name, "1k")
    ok("write", name, "hello from the shell")
    assert ok("read", name) == "hello from the shell\n"
    ok("write", name, "-", input="from stdin".encode())
    assert ok("read", name) == "from stdin\n"
    f = tmp_path / "msg.txt"
    f.write_text("from a file")
    ok("write", name, "--file", str(f))
    assert ok("read", name) == "from a file\n"
    ok("write", name, "wide", "--encoding", "utf-16-le")
    assert ok("read", name, "--encoding", "utf-16-le") == "wide\n"
    hexed = ok("read", name, "--hex", "--length", "16")
    assert hexed.startswith("00000000  77 00 69 00 64 00 65 00 00 00")
    raw = sh("read", name, "--raw", "--length", "4").stdout
    assert raw == "wide".encode("utf-16-le")[:4]
    ok("clear", name)
    assert ok("read", name) == "\n"
    assert shmlink.Segment.open(name).read() == bytes(1024)
    ok("rm", name)
    assert_user_error(sh("read", name), name, "does not exist")


def test_ls_and_info_show_kinds_and_state(name):
    with shmlink.Queue.create(name + "-q", 4096) as q, shmlink.Segment.create(name, 100):
        q.send(b"a")
        q.send(b"b")
        table = ok("ls")
        assert "NAME" in table and name + "-q" in table and "queue" in table
        rows = {r["name"]: r for r in json.loads(ok("ls", "--json"))}
        assert rows[name]["kind"] == "segment" and rows[name]["size"] == 100
        assert os.getpid() in rows[name]["participants"]
        info = json.loads(ok("info", name + "-q", "--json"))
        assert info["kind"] == "queue"
        assert info["state"]["depth"] == 2 and info["state"]["sent"] == 2
        text = ok("info", name + "-q")
        assert "depth:" in text and "participants:" in text
        q.unlink()
        shmlink.remove(name)


def test_send_and_recv_through_a_queue(name):
    ok("send", name, "first", "--create", "64k")
    ok("send", name, "-", input=b"second")
    assert ok("recv", name, "--count", "2") == "first\nsecond\n"
    r = sh("recv", name, "--timeout", "0.2")
    assert_user_error(r, "no message")
    ok("rm", name)


def test_gc_dry_run_and_removal(name):
    code = ("import shmlink, os, sys; s = shmlink.Segment.create(sys.argv[1], 10); "
            "os.kill(os.getpid(), 9)")
    subprocess.run([sys.executable, "-c", code, name], timeout=60)
    assert name in ok("gc", "--dry-run")
    assert os.path.exists(f"/dev/shm/shmlink.{name}")
    assert json.loads(ok("gc", "--json"))["removed"].count(name) == 1
    assert not os.path.exists(f"/dev/shm/shmlink.{name}")


@pytest.mark.parametrize("args,words", [
    (["create", "a/b", "10"], ["not allowed"]),
    (["create", "x-neg", "0"], ["at least 1 byte"]),
    (["read", "no-such-segment-here"], ["does not exist"]),
    (["info", "no-such-segment-here"], ["does not exist"]),
    (["rm", "no-such-segment-here"], ["does not exist"]),
])
def test_user_errors_are_one_line_without_traceback(args, words):
    assert_user_error(sh(*args), *words)


def test_foreign_file_is_reported_not_crashed(name):
    path = f"/dev/shm/shmlink.{name}"
    with open(path, "wb") as f:
        f.write(b"not shmlink at all" * 300)
    try:
        assert "invalid" in ok("ls")
        assert_user_error(sh("read", name), "not a shmlink segment")
    finally:
        os.unlink(path)


def assert_usage_error(r: subprocess.CompletedProcess, command: str, *words: str) -> None:
    """Exit 2: the sub-command's own usage, then one error line naming it; no traceback."""
    err = r.stderr.decode()
    assert r.returncode == 2, (r.returncode, err)
    lines = err.splitlines()
    assert lines[0].startswith(f"usage: shmlink {command} "), err
    assert lines[-1].startswith(f"shmlink {command}: error: "), err
    assert [line for line in lines if "error:" in line] == lines[-1:], err
    assert f"shmlink {command} --help" in lines[-1] and "Traceback" not in err, err
    for w in words:
        assert w in lines[-1], err


def test_usage_errors_exit_2():
    assert_usage_error(sh("create", "onlyname"), "create", "required: size")
    assert_usage_error(sh("create", "x", "twelve"), "create", "not a number")


def _from_checkout() -> bool:
    """True when the shmlink under test is the checkout's (editable install), suite beside it."""
    pkg = os.path.realpath(os.path.dirname(shmlink.__file__))
    return pkg == os.path.join(os.path.realpath(ROOT), "src", "shmlink")


def _bench_from(cwd: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shmlink", "bench", *args],
                          capture_output=True, timeout=60, cwd=cwd)


def test_bench_passes_its_arguments_through():
    r = _bench_from(ROOT, "--list")
    if _from_checkout():
        assert r.returncode == 0, r.stderr.decode()
        out = r.stdout.decode()
        assert "latency" in out and "throughput" in out
    else:  # an installed wheel carries no suite: one clear line, no traceback
        assert_user_error(r, "benchmark suite is not installed", "pip install -e .")


def test_bench_never_imports_a_benchmarks_package_from_the_current_directory(tmp_path):
    # a decoy suite where the command runs: importing it leaves a mark and answers
    marker = tmp_path / "imported"
    decoy = tmp_path / "benchmarks"
    decoy.mkdir()
    (decoy / "__init__.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "def main(argv=None):\n    print('DECOY SUITE')\n    return 0\n")
    r = _bench_from(str(tmp_path), "--list")
    assert not marker.exists(), "shmlink bench imported benchmarks/ from the current directory"
    assert b"DECOY" not in r.stdout
    if _from_checkout():
        assert r.returncode == 0, r.stderr.decode()
        assert b"latency" in r.stdout
    else:
        assert_user_error(r, "benchmark suite is not installed")


def test_the_library_does_not_import_its_cli():
    code = ("import sys, shmlink, shmlink.connection, shmlink.topic, shmlink.board\n"
            "bad = sorted(m for m in sys.modules if m == 'argparse' or m.startswith('shmlink.cli'))\n"
            "print(' '.join(bad))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "", f"import shmlink imported {r.stdout.strip()}"


def test_no_messaging_module_mentions_the_cli():
    # the layer rule in the source: no module below the cli imports it, even lazily
    src = os.path.dirname(os.path.abspath(shmlink.__file__))
    for dirpath, dirnames, files in os.walk(src):
        if os.path.basename(dirpath) == "cli":
            dirnames.clear()
            continue
        dirnames[:] = [d for d in dirnames if d != "cli"]
        for f in files:
            if f.endswith(".py") and f != "__main__.py":
                text = open(os.path.join(dirpath, f), encoding="utf-8").read()
                for word in ("argparse", "from .cli", "import cli", "shmlink.cli", "sys.stdout"):
                    assert word not in text, f"{os.path.join(dirpath, f)} mentions {word}"


def test_version():
    assert shmlink.__version__ in ok("--version")


# --- bad input: one line, a non-zero exit, never a traceback -------------------------------------

@pytest.fixture(scope="module")
def cli_dir(tmp_path_factory):
    """A private $SHMLINK_DIR holding a segment 's' (file-backed: nothing in /dev/shm)."""
    d = tmp_path_factory.mktemp("shmdir")
    seg = shmlink.Segment.create(None, 4096, path=str(d / "shmlink.s"))
    (d / "binary.bin").write_bytes(b"\x00\xff\xfe binary \x80")
    yield d
    seg.unlink()
    seg.close()


def sh_in(d, *args, input: bytes = b"") -> subprocess.CompletedProcess:
    """``python -m shmlink ARGS`` with $SHMLINK_DIR=d, in d; args may be bytes (raw argv)."""
    env = dict(os.environ, SHMLINK_DIR=str(d))
    return subprocess.run([sys.executable, "-m", "shmlink", *args], input=input,
                          capture_output=True, timeout=60, cwd=str(d), env=env)


NOT_UTF8 = b"caf\xe9-\xff"
BIG = "9" * 400

# (arguments, stdin, exit status, words the one line must hold: the offending input)
BAD_INPUTS = {
    "write non-UTF-8": (["write", "s", NOT_UTF8], b"", 2, ["byte 0xe9", "--file or stdin"]),
    "send non-UTF-8": (["send", "q", NOT_UTF8], b"", 2, ["byte 0xe9"]),
    "pub non-UTF-8": (["pub", "t", NOT_UTF8], b"", 2, ["byte 0xe9"]),
    "board write non-UTF-8": (["board", "write", "b", NOT_UTF8], b"", 2, ["byte 0xe9"]),
    "request non-UTF-8": (["request", "L", NOT_UTF8], b"", 2, ["byte 0xe9"]),
    "write binary stdin": (["write", "s"], b"ok \xff\xfe", 1, ["stdin", "0xff", "--binary"]),
    "write binary --file": (["write", "s", "--file", "binary.bin"], b"", 1,
                            ["binary.bin", "0xff", "--binary"]),
    "create 400-digit size": (["create", "big", BIG], b"", 2, ["9999999999", "size"]),
    "send --create 400-digit": (["send", "q", "x", "--create", BIG], b"", 2, ["9999999999"]),
    "pub --create 400-digit": (["pub", "t", "x", "--create", BIG], b"", 2, ["9999999999"]),
    "board --create 400-digit": (["board", "write", "b", "x", "--create", BIG], b"", 2,
                                 ["9999999999"]),
    "create --mode 999": (["create", "m", "4k", "--mode", "999"], b"", 2, ["'999'", "octal"]),
    "recv --timeout -1": (["recv", "q", "--timeout", "-1"], b"", 2, ["'-1'", "timeout"]),
    "send --timeout nan": (["send", "q", "x", "--timeout", "nan"], b"", 2, ["'nan'"]),
    "write --encoding bogus": (["write", "s", "x", "--encoding", "bogus"], b"", 2, ["'bogus'"]),
    "recv --count -3": (["recv", "q", "--count", "-3"], b"", 2, ["'-3'", "count"]),
    "demo --rounds -1": (["demo", "--rounds", "-1"], b"", 2, ["'-1'", "--rounds"]),
    # found by the fuzz below: codecs that refuse a whole input raise a bare UnicodeError
    # (a UnicodeEncodeError from Python 3.13 on: "... which idna cannot encode")
    "write --encoding idna": (["write", "s", "x" * 100, "--encoding", "idna"], b"", 1,
                              ["idna", "cannot", "--encoding"]),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_and_a_failure(cli_dir, case):
    args, stdin, status, words = BAD_INPUTS[case]
    r = sh_in(cli_dir, *args, input=stdin)
    err = r.stderr.decode("utf-8", "backslashreplace")
    assert r.returncode == status, (r.returncode, err)
    assert "Traceback" not in err and "internal error" not in err, err
    if status == 2:  # the sub-command's usage, then the line
        assert err.startswith(f"usage: shmlink {args[0]} "), err
    else:
        assert err.count("\n") == 1, err
    assert err.endswith("\n") and err.count("error:") == 1, err
    last = err.splitlines()[-1]
    for w in words:
        assert w in last, (w, err)
    assert not os.path.exists(cli_dir / "shmlink.big") and not os.path.exists(cli_dir / "shmlink.m")


def test_the_environment_directory_errors_reach_the_command_as_one_line(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    for d, words in [(tmp_path / "missing", ["does not exist", "mkdir"]),
                     (tmp_path / "file", ["is not a directory"]),
                     ("", ["set but empty"])]:
        for args in (["ls"], ["create", "x", "4k"], ["read", "x"], ["gc"]):
            r = subprocess.run([sys.executable, "-m", "shmlink", *args], capture_output=True,
                               timeout=60, cwd=str(tmp_path),
                               env=dict(os.environ, SHMLINK_DIR=str(d)))
            err = r.stderr.decode()
            assert r.returncode == 1 and err.count("\n") == 1, (args, d, err)
            assert err.startswith("shmlink: error: ") and "$SHMLINK_DIR" in err, err
            for w in words:
                assert w in err, (args, d, err)
    assert sorted(os.listdir(tmp_path)) == ["file"]


CRASHING_COMMAND = """
import sys
import shmlink.cli, shmlink.cli.segment as seg
def cmd_ls(a):
    raise RuntimeError("a bug in ls")
seg.cmd_ls = cmd_ls  # a command with a bug: main's last resort must report it
sys.exit(shmlink.cli.main(["ls"]))
"""


@pytest.mark.parametrize("debug", ["", "1"])
def test_an_unexpected_exception_is_one_line_and_exit_70(debug):
    env = dict(os.environ, SHMLINK_DEBUG=debug)
    r = subprocess.run([sys.executable, "-c", CRASHING_COMMAND], capture_output=True,
                       timeout=60, env=env, text=True)
    assert r.returncode == 70, r.stderr
    last = r.stderr.splitlines()[-1]
    assert last.startswith("shmlink: internal error: RuntimeError: a bug in ls (please report")
    if debug:
        assert "Traceback" in r.stderr and "a bug in ls" in r.stderr.splitlines()[-2]
    else:
        assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


# --- fuzz: hypothesis-made command lines never end in a traceback -------------------------------

def mostly(valid, hostile):
    """Three draws in four from ``valid`` (to reach deep into the commands), else ``hostile``."""
    return st.integers(0, 3).flatmap(lambda i: hostile if i == 0 else st.sampled_from(valid))


HOSTILE_NUMBERS = [b"0", b"-1", b"-3", b"1e300", b"nan", b"inf", b"-inf", BIG.encode(), b"999",
                   b"", b" ", b"0x10", b"1" * 5000, b"\xff", b"1.5", b"0o777", b"077"]
VALUES = {
    "name": mostly([b"s", b"q", b"t", b"b", b"L", b"nope"],
                   st.one_of(st.sampled_from([b"", b"-", b"a/b", b"\xff", b"x" * 250, b"..",
                                              b"-v"]), st.binary(max_size=8))),
    "num": mostly([b"1", b"2", b"3", b"4096", b"64k", b"1M", b"600"],
                  st.one_of(st.sampled_from(HOSTILE_NUMBERS), st.binary(max_size=6))),
    "timeout": mostly([b"0", b"0.01", b"0.05"],
                      st.sampled_from([b"-1", b"nan", b"inf", b"1e300", b"x", b""])),
    "enc": mostly([b"utf-8", b"latin-1", b"utf-16-le", b"utf-32"],
                  st.sampled_from([b"bogus", b"hex", b"rot13", b"ascii", b"idna", b"punycode",
                                   b"undefined", b"utf-7", b"\xff", b"cp037", b"utf-16"])),
    "file": mostly([b"binary.bin", b"text.txt", b"-"],
                   st.sampled_from([b"missing.txt", b".", b"/dev/null", b"\xff", b""])),
    "text": mostly([b"hello", b"-", b"caf\xc3\xa9", b"x" * 3000],
                   st.one_of(st.sampled_from([b"\xff", b"", b"--", b"\xed\xa0\x80"]),
                             st.binary(max_size=12))),
    "action": mostly([b"write", b"read", b"watch", b"clear"], st.just(b"bogus")),
    "lifetime": mostly([b"persist", b"auto"], st.just(b"forever")),
    "delivery": mostly([b"lossless", b"latest"], st.just(b"bogus")),
}
# sub-command: (positionals, options: flag -> kind of value, None for a switch)
COMMANDS = {
    "ls": ([], {"--json": None}),
    "info": (["name"], {"--json": None}),
    "create": (["name", "num"], {"--mode": "num", "--lifetime": "lifetime", "--json": None}),
    "write": (["name", "text"], {"--file": "file", "--binary": None, "--encoding": "enc",
                                 "--offset": "num", "-v": None}),
    "read": (["name"], {"--hex": None, "--raw": None, "--json": None, "--encoding": "enc",
                        "--offset": "num", "--length": "num"}),
    "clear": (["name"], {}),
    "rm": (["name", "name"], {"-f": None}),
    "gc": ([], {"--dry-run": None, "--json": None}),
    "send": (["name", "text"], {"--file": "file", "--create": "num", "--timeout": "timeout"}),
    "recv": (["name"], {"--count": "num", "--follow": None, "--timeout": "timeout",
                        "--raw": None, "--json": None}),
    "demo": ([], {"--rounds": "num"}),
    "board": (["action", "name", "text"], {"--create": "num", "--raw": None, "--json": None,
                                           "--encoding": "enc", "--count": "num",
                                           "--initial": None, "--timeout": "timeout",
                                           "-v": None}),
    "pub": (["name", "text"], {"--whole": None, "--create": "num", "--delivery": "delivery",
                               "--timeout": "timeout"}),
    "sub": (["name"], {"--count": "num", "--oldest": None, "--timeout": "timeout",
                       "--raw": None, "--json": None}),
    "request": (["name", "text"], {"--file": "file", "--timeout": "timeout", "--raw": None,
                                   "--json": None}),
    "serve": (["name"], {"--count": "num", "--capacity": "num"}),
}


#: examples per sub-command (more for a longer hunt: SHMLINK_CLI_FUZZ=300 pytest -k fuzzed)
FUZZ_EXAMPLES = int(os.environ.get("SHMLINK_CLI_FUZZ", "30"))


@st.composite
def command_lines(draw, command):
    positionals, options = COMMANDS[command]
    argv = [command.encode()]
    n = len(positionals) - draw(st.integers(0, 9)) // 8  # one time in five: one too few
    argv += [draw(VALUES[kind]) for kind in positionals[:max(0, n)]]
    for flag in draw(st.lists(st.sampled_from(sorted(options)), max_size=3)) if options else []:
        kind = options[flag]
        argv.append(flag.encode())
        if kind is not None and draw(st.integers(0, 19)):  # now and then the value is missing
            argv.append(draw(VALUES[kind]))
    if draw(st.integers(0, 19)) == 0:
        argv.insert(draw(st.integers(1, len(argv))), draw(st.binary(max_size=6)))
    stdin = draw(st.sampled_from([b"", b"line one\nline two\n", b"\xff\xfe\x00 binary",
                                  b"x" * 5000]))
    return argv, stdin


class Commander:
    """The fuzz's child: runs command lines in-process with $SHMLINK_DIR private (workers.cli)."""

    def __init__(self, d):
        r, w = os.pipe()
        env = dict(python_env(), SHMLINK_DIR=str(d))
        self.proc = subprocess.Popen([sys.executable, "-m", "workers.cli", str(w)],
                                     stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, pass_fds=(w,), cwd=str(d),
                                     env=env)
        os.close(w)
        self.answers = os.fdopen(r, "r")

    def reset(self):
        """Make segment 's', queue 'q', topic 't' and board 'b' exist again."""
        assert self._ask({"reset": True}) == (0, "")

    def run(self, argv, stdin=b""):
        return self._ask({"argv": [a.hex() for a in argv], "stdin": stdin.hex()})

    def _ask(self, req):
        argv = [bytes.fromhex(a) for a in req.get("argv", [])]
        self.proc.stdin.write((json.dumps(req) + "\n").encode())
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.answers], [], [], 30)
        assert ready, f"shmlink {argv!r} hung (the child did not answer in 30 s)"
        line = self.answers.readline()
        assert line, f"shmlink {argv!r} killed the child (exit {self.proc.wait(10)})"
        got = json.loads(line)
        return got["rc"], got["stderr"]

    def close(self):
        self.proc.stdin.close()
        try:
            self.proc.wait(30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)
        self.answers.close()


@pytest.fixture(scope="module")
def commander(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzzdir")
    (d / "binary.bin").write_bytes(b"\x00\xff\xfe binary \x80")
    (d / "text.txt").write_text("some text")
    c = Commander(d)
    try:
        yield c
    finally:
        c.close()
    assert not [e for e in os.listdir(d) if e.startswith(".")], "a temporary file stayed behind"


@pytest.mark.parametrize("command", sorted(COMMANDS))
@settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_fuzzed_command_lines_never_end_in_a_traceback(commander, command, data):
    argv, stdin = data.draw(command_lines(command))
    commander.reset()
    rc, err = commander.run(argv, stdin)
    event(f"exit {rc}")
    assert rc in (0, 1, 2, 130), (argv, rc, err)
    assert "Traceback" not in err and "internal error" not in err, (argv, err)
    if rc in (1, 2):
        lines = err.splitlines()
        errors = [line for line in lines if "error:" in line]
        if command == "rm":  # one line for each name it could not remove
            assert errors and lines[-len(errors):] == errors, (argv, err)
        else:
            assert len(errors) == 1 and lines[-1] == errors[0], (argv, err)


# --- a CLI scripts can lean on: --json, info, advice, usage, pipelines, Ctrl-C ------------------

from shmlink.cli._advice import PYTHON_ADVICE  # noqa: E402
from shmlink.cli._reference import JSON_KEYS, STATE_KEYS  # noqa: E402

_TYPES = {"int": int, "float": (int, float), "string": str, "bool": bool, "object": dict,
          "null": type(None)}


def _type_ok(value, typ: str) -> bool:
    """``value`` has the documented JSON type (``int or null``, ``list of int`` ...)."""
    for alt in typ.split(" or "):
        if alt.startswith("list of "):
            if isinstance(value, list) and all(_type_ok(v, alt[8:]) for v in value):
                return True
        elif isinstance(value, _TYPES[alt]) and not (alt in ("int", "float")
                                                      and isinstance(value, bool)):
            return True
    return False


def assert_keys(obj: dict, keys) -> None:
    """Exactly the documented keys, in order, each value of its documented type."""
    assert list(obj) == [k for k, _, _ in keys], (list(obj), keys)
    for k, typ, _ in keys:
        assert _type_ok(obj[k], typ), (k, typ, obj[k])


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def test_ls_shows_owner_and_mode_like_ipcs(names):
    import pwd
    import stat as st_

    a, b = names("a"), names("b")
    with shmlink.Segment.create(a, 100, mode=0o640), shmlink.Queue.create(b, 4096, mode=0o604):
        table = ok("ls").splitlines()
        assert table[0].split() == ["OWNER", "MODE", "SIZE", "KIND", "LIFETIME", "AGE", "PIDS",
                                    "NAME"]
        rows = {r["name"]: r for r in json.loads(ok("ls", "--json"))}
        for n, kind in ((a, "segment"), (b, "queue")):
            fst = os.stat(rows[n]["path"])
            owner = pwd.getpwuid(fst.st_uid).pw_name
            row = next(line.split() for line in table[1:] if line.split()[-1] == n)
            assert row[:4] == [owner, f"{st_.S_IMODE(fst.st_mode):04o}", str(rows[n]["size"]),
                               kind], row
            assert rows[n]["uid"] == fst.st_uid and rows[n]["owner"] == owner
            assert rows[n]["mode"] == st_.S_IMODE(fst.st_mode)
            assert_keys(rows[n], JSON_KEYS["ls"])
        assert rows[a]["mode"] == 0o640 and rows[b]["mode"] == 0o604


def _listener_with_a_client(name):
    """A listener in this process with one accepted connection (closed by the caller)."""
    import threading
    lst = shmlink.listen(name)
    got = {}
    t = threading.Thread(target=lambda: got.setdefault("s", lst.accept(timeout=30)))
    t.start()
    client = shmlink.connect(name, timeout=30)
    t.join(30)
    return lst, got["s"], client


def test_info_json_has_the_documented_keys_for_every_kind(names):
    objs = {
        "segment": shmlink.Segment.create(names("s"), 64),
        "queue": shmlink.Queue.create(names("q"), 4096),
        "topic": shmlink.Topic.create(names("t"), 4096),
        "board": shmlink.Board.create(names("b"), 64),
        "mutex": shmlink.Mutex.create(names("m")),
        "event": shmlink.Event.create(names("e")),
    }
    sub = objs["topic"].subscribe()
    lst, server, client = _listener_with_a_client(names("L"))
    from shmlink.connection._listener import _listener_clients
    conn_name = _listener_clients(lst.name)[0]["name"]
    try:
        objs["queue"].send(b"x")
        for kind, obj in [*objs.items(), ("listener", lst), ("connection", None)]:
            name = conn_name if kind == "connection" else obj.name
            d = json.loads(ok("info", name, "--json"))
            assert_keys(d, JSON_KEYS["info"])
            assert d["kind"] == kind and d["state_error"] is None
            if kind == "segment":
                assert d["state"] == {}
                continue
            assert_keys(d["state"], STATE_KEYS[kind])
        assert json.loads(ok("info", objs["queue"].name, "--json"))["state"]["depth"] == 1
        state = json.loads(ok("info", objs["topic"].name, "--json"))["state"]
        assert [s["pid"] for s in state["subscribers"]] == [os.getpid()]
        state = json.loads(ok("info", lst.name, "--json"))["state"]
        assert state["server_pid"] == os.getpid() and state["server_alive"] is True
        assert [(c["name"], c["client_pid"], c["accept"]) for c in state["clients"]] == \
            [(conn_name, os.getpid(), "accepted")]
    finally:
        sub.close()
        for c in (client, server, lst):
            c.close()
        for obj in objs.values():
            obj.unlink()
            obj.close()


def test_info_text_is_aligned_with_sizes_as_given_and_tables_for_rows(names):
    q = shmlink.Queue.create(names("q"), 64 * 1024)
    t = shmlink.Topic.create(names("t"), 4096)
    sub = t.subscribe()
    lst, server, client = _listener_with_a_client(names("L"))
    try:
        text = ok("info", q.name)
        assert re.search(r"^capacity: +64 KiB \(65536 bytes\)$", text, re.M), text
        for kind_text in (text, ok("info", t.name), ok("info", lst.name)):
            lines = kind_text.splitlines()
            labelled = [line for line in lines if re.match(r"^[a-z][a-z ]*:", line)]
            columns = {len(re.match(r"^[a-z ]+: *", line).group()) for line in labelled}
            assert len(columns) == 1, kind_text  # every value starts in the same column
            for bad in ("{", "[", "None", "True", "False", "'"):  # no Python reprs
                assert bad not in kind_text, kind_text
        text = ok("info", t.name)
        assert re.search(r"^subscribers: +1$", text, re.M), text
        i = text.splitlines().index(next(ln for ln in text.splitlines() if "SLOT" in ln))
        header, row = text.splitlines()[i].split(), text.splitlines()[i + 1].split()
        assert header == ["SLOT", "PID", "ALIVE", "LAG", "MISSED", "RECEIVED"]
        assert row == ["0", str(os.getpid()), "yes", "0", "0", "0"], text
        text = ok("info", lst.name)
        assert re.search(r"^server pid: +PID %d$" % os.getpid(), text, re.M), text
        row = next(ln for ln in text.splitlines() if ln.strip().startswith(str(os.getpid())))
        assert row.split()[:3] == [str(os.getpid()), "yes", "connected"], text
    finally:
        sub.close()
        for c in (client, server, lst):
            c.close()
        for obj in (q, t):
            obj.unlink()
            obj.close()


def test_json_of_every_command_that_prints_data(names):
    seg, q, t, b, L = (names(k) for k in "sqtbL")
    d = json.loads(ok("create", seg, "4k", "--json"))
    assert_keys(d, JSON_KEYS["create"])
    assert d["size"] == 4096 and d["mode"] == 0o600 and d["kind"] == "segment"
    ok("write", seg, "héllo")
    for extra in ([], ["--length", "3"]):  # one key set whatever the flags
        d = json.loads(ok("read", seg, "--json", *extra))
        assert_keys(d, JSON_KEYS["read"])
    d = json.loads(ok("read", seg, "--json"))
    assert d["text"] == "héllo" and d["length"] == 6 and base64.b64decode(d["base64"]) == \
        "héllo".encode()
    d = json.loads(ok("read", seg, "--json", "--length", "1", "--offset", "1"))
    assert d["text"] is None and base64.b64decode(d["base64"]) == b"\xc3"  # half a character

    ok("send", q, "--create", "4k", "one")  # a message after an option: intermixed
    ok("send", q, "-", input=b"\xff\xfe")
    got = json_lines(ok("recv", q, "--count", "2", "--json"))
    for m in got:
        assert_keys(m, JSON_KEYS["recv"])
    assert [m["text"] for m in got] == ["one", None]
    assert base64.b64decode(got[1]["base64"]) == b"\xff\xfe" and got[1]["length"] == 2

    ok("pub", t, "--create", "4k", "first")
    got = json_lines(ok("sub", t, "--oldest", "--count", "1", "--json"))
    assert_keys(got[0], JSON_KEYS["sub"])
    assert got[0]["seq"] == 0 and got[0]["text"] == "first" and got[0]["missed"] == 0

    ok("board", "write", b, "--create", "64", "v1")
    got = json_lines(ok("board", "read", b, "--json"))
    assert_keys(got[0], JSON_KEYS["board"])
    assert got[0]["version"] == 1 and got[0]["text"] == "v1"
    got = json_lines(ok("board", "watch", b, "--initial", "--count", "1", "--json"))
    assert got[0]["version"] == 1 and got[0]["text"] == "v1"

    server = subprocess.Popen([sys.executable, "-m", "shmlink", "serve", L, "--count", "1"],
                              stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, cwd=ROOT)
    try:
        assert b"listening" in server.stderr.readline()
        got = json_lines(ok("request", L, "ping", "--json", "--timeout", "30"))
        assert_keys(got[0], JSON_KEYS["request"])
        assert got[0]["text"] == "ping"
    finally:
        server.wait(30)

    for flags in ([], ["--dry-run"]):  # the same keys with and without --dry-run
        d = json.loads(ok("gc", "--json", *flags))
        assert_keys(d, JSON_KEYS["gc"])
        assert d["dry_run"] is bool(flags)
    ok("rm", seg, q, t, b)


def test_every_json_key_is_documented_in_help_and_docs():
    docs = open(os.path.join(ROOT, "docs", "cli.md"), encoding="utf-8").read()
    sections = re.split(r"^### ", docs, flags=re.M)
    for command, keys in JSON_KEYS.items():
        section = next((s for s in sections if s.startswith(f"`shmlink {command}")), None)
        assert section is not None, f"docs/cli.md has no section for shmlink {command}"
        for k, typ, _ in keys:
            assert re.search(rf"^\| `{k}` \| {re.escape(typ)} \|", section, re.M), (command, k)
    state = next(s for s in sections if s.startswith("`info` state"))
    for kind, keys in STATE_KEYS.items():
        for k, typ, _ in keys:
            assert re.search(rf"^\| {kind} \| `{k}` \| {re.escape(typ)} \|", state, re.M), \
                (kind, k)
    help_text = ok("info", "--help")
    for k, _, _ in JSON_KEYS["info"] + STATE_KEYS["topic"]:
        assert re.search(rf"^ +{k} ", help_text, re.M), k


CLI_ADVICE = [
    # (set-up: kind -> created by the library, command line, words of the advice)
    ({"segment": "X"}, ["create", "X", "1k"], ["`shmlink rm X`"]),
    ({}, ["rm", "X"], ["--force", "`shmlink ls`"]),
    ({}, ["send", "X", "hi"], ["--create"]),
    ({}, ["read", "X"], ["`shmlink ls`"]),
    ({"segment": "X"}, ["send", "X", "hi"], ["`shmlink info X`", "`shmlink read`"]),
    ({"queue": "X"}, ["sub", "X"], ["`shmlink info X`", "`shmlink send`/`recv`"]),
    ({"queue": "X"}, ["send", "X", "hi", "--create", "8k"], ["leave out --create",
                                                             "`shmlink rm X`"]),
    ({}, ["request", "X", "hi", "--timeout", "1"], ["`shmlink serve X`"]),
    ({"board": "X"}, ["board", "write", "X", "x" * 100], ["`shmlink rm X`", "--create"]),
    ({"queue": "X"}, ["recv", "X", "--timeout", "0"], ["--timeout"]),
    ({"segment": "X"}, ["read", "X", "--encoding", "utf-16-le"], ["--encoding", "--hex"]),
]


@pytest.mark.parametrize("case", range(len(CLI_ADVICE)))
def test_error_messages_give_cli_advice_not_python_advice(names, case):
    made, argv, words = CLI_ADVICE[case]
    x = names("x")
    objs = []
    for kind in made:
        if kind == "segment":
            s = shmlink.Segment.create(x, 64)
            s.write(b"\x00\xd8A\x00\x00\x00")  # a lone surrogate: not UTF-16 text
            objs.append(s)
        else:
            objs.append({"queue": shmlink.Queue, "board": shmlink.Board}[kind].create(
                x, 4096 if kind == "queue" else 16))
    try:
        r = sh(*[x if a == "X" else a for a in argv])
        err = r.stderr.decode()
        assert_user_error(r)
        assert not PYTHON_ADVICE.search(err), err
        for w in words:
            assert w.replace("X", x) in err, err
    finally:
        for o in objs:
            o.unlink()
            o.close()


def test_debug_shows_the_traceback_of_an_error():
    for argv in (["--debug", "read", "no-such-thing-here"], ["read", "no-such-thing-here",
                                                              "--debug"]):
        r = sh(*argv)
        err = r.stderr.decode()
        assert r.returncode == 1 and "Traceback" in err and "SegmentNotFound" in err, err
        assert err.splitlines()[-1].startswith("shmlink: error: segment 'no-such-thing-here'")


@pytest.mark.parametrize("argv,command,words", [
    (["ls", "--bogus"], "ls", ["unrecognized arguments: --bogus"]),
    (["recv", "q", "--raw", "--json"], "recv", ["not allowed with"]),
    (["board", "read", "b", "text"], "board", ["takes only a NAME"]),
    (["board", "clear", "b", "--json"], "board", ["--json is for read and watch"]),
    (["sub"], "sub", ["required: topic"]),
])
def test_a_usage_error_shows_the_subcommands_usage(argv, command, words):
    assert_usage_error(sh(*argv), command, *words)


def _pipeline(cmd: list[str], timeout: float = 60) -> tuple[list[int], str, bytes]:
    """``shmlink CMD | head -1`` in bash: (each exit status, what head printed, stderr)."""
    line = " ".join(shlex.quote(a) for a in [sys.executable, "-m", "shmlink", *cmd])
    r = subprocess.run(["bash", "-c", f'{line} | head -1; echo "status ${{PIPESTATUS[*]}}" >&2'],
                       capture_output=True, timeout=timeout, cwd=ROOT)
    *noise, status = r.stderr.decode().splitlines()
    return [int(x) for x in status.split()[1:]], r.stdout.decode(), "\n".join(noise).encode()


@pytest.mark.parametrize("kind", ["recv", "sub", "board"])
def test_a_closed_pipe_ends_a_follower_quietly_without_another_message(names, kind):
    # head exits after the first line; nothing more arrives: the follower must notice the
    # closed pipe by itself (not at its next write) and exit 0 without a word
    n = names(kind)
    if kind == "recv":
        obj = shmlink.Queue.create(n, 4096)
        obj.send(b"first")
        cmd = ["recv", n, "--follow"]
    elif kind == "sub":
        obj = shmlink.Topic.create(n, 4096)
        obj.publish(b"first")
        cmd = ["sub", n, "--oldest"]
    else:
        obj = shmlink.Board.create(n, 64)
        obj.write(b"first")
        cmd = ["board", "watch", n, "--initial"]
    try:
        status, out_, noise = _pipeline(cmd)
        assert out_ == "first\n" and status == [0, 0] and noise == b"", (status, noise)
    finally:
        obj.unlink()
        obj.close()


def test_a_closed_pipe_mid_stream_leaves_no_noise(name):
    # the follower is writing when head exits: EPIPE on write (and at the final flush)
    with shmlink.Queue.create(name, 1 << 20) as q:
        for i in range(20000):
            q.send(b"line %d" % i)
        status, out_, noise = _pipeline(["recv", name, "--follow"])
        assert out_ == "line 0\n" and status == [0, 0], status
        assert noise == b"", noise  # no BrokenPipeError, no "Exception ignored"
        status, out_, noise = _pipeline(["recv", name, "--follow", "--json"])
        assert json.loads(out_)["text"].startswith("line ") and status == [0, 0] and noise == b""
        q.unlink()


@pytest.mark.parametrize("cmd", [["recv", "{n}", "--follow"], ["sub", "{n}"]])
def test_ctrl_c_ends_a_follower_quietly_with_130(names, cmd):
    n = names("f")
    obj = shmlink.Queue.create(n, 4096) if cmd[0] == "recv" else shmlink.Topic.create(n, 4096)
    p = subprocess.Popen([sys.executable, "-m", "shmlink", *[a.format(n=n) for a in cmd]],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    try:
        # a first message proves it is waiting in its loop (a subscriber has to join first)
        if cmd[0] == "recv":
            obj.send(b"ready")
        else:
            wait_for(lambda: obj.subscriber_count == 1, timeout=30, what="the subscriber")
            obj.publish(b"ready")
        assert p.stdout.readline() == b"ready\n"
        p.send_signal(signal.SIGINT)
        assert p.wait(30) == 130
        assert p.stderr.read() == b""
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)
        obj.unlink()
        obj.close()
