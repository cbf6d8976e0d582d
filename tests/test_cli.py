"""The shmlink command, run as a real subprocess like a shell script would."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import shmlink
from support import python_env

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


def test_usage_errors_exit_2():
    r = sh("create", "onlyname")
    assert r.returncode == 2 and b"required: size" in r.stderr
    assert r.stderr.count(b"\n") == 1 and b"shmlink create --help" in r.stderr
    r = sh("create", "x", "twelve")
    assert r.returncode == 2 and b"not a number" in r.stderr


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
    assert err.count("\n") == 1 and err.endswith("\n"), err
    for w in words:
        assert w in err, (w, err)
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
    "create": (["name", "num"], {"--mode": "num", "--lifetime": "lifetime"}),
    "write": (["name", "text"], {"--file": "file", "--binary": None, "--encoding": "enc",
                                 "--offset": "num", "-v": None}),
    "read": (["name"], {"--hex": None, "--raw": None, "--encoding": "enc", "--offset": "num",
                        "--length": "num"}),
    "clear": (["name"], {}),
    "rm": (["name", "name"], {"-f": None}),
    "gc": ([], {"--dry-run": None, "--json": None}),
    "send": (["name", "text"], {"--file": "file", "--create": "num", "--timeout": "timeout"}),
    "recv": (["name"], {"--count": "num", "--follow": None, "--timeout": "timeout",
                        "--raw": None}),
    "demo": ([], {"--rounds": "num"}),
    "board": (["action", "name", "text"], {"--create": "num", "--raw": None, "--encoding": "enc",
                                           "--count": "num", "--initial": None,
                                           "--timeout": "timeout", "-v": None}),
    "pub": (["name", "text"], {"--whole": None, "--create": "num", "--delivery": "delivery",
                               "--timeout": "timeout"}),
    "sub": (["name"], {"--count": "num", "--oldest": None, "--timeout": "timeout",
                       "--raw": None}),
    "request": (["name", "text"], {"--file": "file", "--timeout": "timeout", "--raw": None}),
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
