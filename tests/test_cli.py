"""The shmlink command, run as a real subprocess like a shell script would."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import shmlink

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
    assert r.returncode == 2 and b"usage:" in r.stderr
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
