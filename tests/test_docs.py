"""The reference manual (docs/) builds without warnings, and every example in it runs.

The convention for examples in ``docs/*.md``:

* a fenced block opened with exactly ```` ```python ```` is a **runnable example**: a whole
  program, run here as a script in a subprocess (``python example.py``, so a
  ``multiprocessing`` child needs the ``if __name__ == "__main__":`` guard) that must exit 0
  within ``EXAMPLE_TIMEOUT`` seconds and leave nothing behind in the segment directory;
* a fragment that is not meant to run alone (a call shown out of context, another library's
  API) is written as a MyST directive, ```` ```{code-block} python ````, which renders the
  same and is not run;
* shell, C and other languages are never run from the pages (the C example the manual
  shows is ``examples/c/board_hello.c``, compiled and run below).

Each example runs with ``$SHMLINK_DIR`` pointing at a fresh directory of its own (in
``/dev/shm`` when there is one), so examples may use fixed, readable names without meeting
other tests or each other, and whatever one leaves behind is found and removed.
"""

from __future__ import annotations

import html
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

import pytest

import shmlink

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
INCLUDE = os.path.join(os.path.dirname(shmlink.__file__), "include")
EXAMPLE_TIMEOUT = 90
BUILD_TIMEOUT = 600

#: pages that document one object each: each must hold at least one runnable example
OBJECT_PAGES = ["segment", "mutex", "event", "queue", "topic", "board", "connection"]

_FENCE = re.compile(r"^(`{3,}|~{3,})(.*)$")


def python_examples(path: str) -> list[tuple[int, str]]:
    """(line number, code) of each runnable example (a ```python fence) in a Markdown page."""
    out: list[tuple[int, str]] = []
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, info = m.group(1), m.group(2).strip()
        start = i + 1
        i = start
        while i < len(lines) and not (lines[i].startswith(fence[0] * len(fence))
                                      and not lines[i].strip(fence[0]).strip()):
            i += 1
        if info == "python":
            out.append((start, "\n".join(lines[start:i]) + "\n"))
        i += 1
    return out


def _pages() -> list[str]:
    return sorted(os.path.join(DOCS, f) for f in os.listdir(DOCS) if f.endswith(".md"))


EXAMPLES = [(os.path.basename(p), line, code) for p in _pages() for line, code in
            python_examples(p)]


def _private_dir() -> str:
    """A fresh segment directory for one example: in /dev/shm (tmpfs) when it is usable."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    return tempfile.mkdtemp(prefix=f"docs-example-{os.getpid()}-", dir=base)


@pytest.mark.parametrize("page,line,code", EXAMPLES,
                         ids=[f"{p[:-3]}:{line}" for p, line, _ in EXAMPLES])
def test_example_runs(page, line, code, tmp_path):
    script = tmp_path / "example.py"
    script.write_text(code, encoding="utf-8")
    seg_dir = _private_dir()
    env = dict(os.environ, SHMLINK_DIR=seg_dir)
    try:
        r = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=EXAMPLE_TIMEOUT)
        assert r.returncode == 0, (f"docs/{page}, example at line {line} failed "
                                   f"(exit {r.returncode}):\n{r.stdout}\n{r.stderr}")
        left = sorted(os.listdir(seg_dir))
        assert not left, f"docs/{page}, example at line {line} left objects behind: {left}"
    finally:
        shutil.rmtree(seg_dir, ignore_errors=True)


def test_every_object_page_has_a_runnable_example():
    counts = {page: 0 for page in OBJECT_PAGES}
    for page, _line, _code in EXAMPLES:
        if page[:-3] in counts:
            counts[page[:-3]] += 1
    assert all(counts.values()), f"object pages without a runnable example: {counts}"


def test_the_example_convention_is_followed():
    """A fence that says python in another way would be skipped silently: refuse it."""
    for path in _pages():
        with open(path, encoding="utf-8") as f:
            for n, text in enumerate(f, 1):
                m = _FENCE.match(text.rstrip("\n"))
                if m and m.group(2).strip().lower() in ("py", "python3", "pycon", "{python}"):
                    pytest.fail(f"{path}:{n}: write ```python (runs) or ```{{code-block}} "
                                "python (does not)")


# --- the build ----------------------------------------------------------------

def _missing_tools() -> list[str]:
    return [m for m in ("sphinx", "myst_parser", "sphinxarg") if importlib.util.find_spec(m) is None]


@pytest.fixture(scope="module")
def built_manual(tmp_path_factory):
    missing = _missing_tools()
    if missing:
        pytest.skip(f"the manual needs {', '.join(missing)}: pip install -e '.[docs]'")
    out = tmp_path_factory.mktemp("manual")
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
                        "-d", str(out / ".doctrees"), DOCS, str(out / "html")],
                       capture_output=True, text=True, timeout=BUILD_TIMEOUT, cwd=ROOT)
    elapsed = time.monotonic() - t0
    assert r.returncode == 0, f"sphinx-build failed (warnings are errors):\n{r.stderr}\n{r.stdout}"
    print(f"manual built in {elapsed:.1f} s")
    return out / "html"


def _text(html_dir, page: str) -> str:
    with open(html_dir / f"{page}.html", encoding="utf-8") as f:
        text = html.unescape(re.sub(r"<[^>]+>", "", f.read()))
    # as written, not as typeset (smartquotes)
    return " ".join(text.translate(str.maketrans("\u2018\u2019\u201c\u201d", "''\"\"")).split())


def test_manual_builds_without_warnings(built_manual):
    for page in ["index", *OBJECT_PAGES, "api", "errors", "command", "c-header", "design",
                 "coming-from", "containers"]:
        assert (built_manual / f"{page}.html").is_file(), f"{page}.html was not built"


def test_error_tree_is_generated_from_the_code(built_manual):
    text = _text(built_manual, "errors")
    for name in shmlink.errors.__all__:
        cls = getattr(shmlink.errors, name)
        assert name in text, f"{name} is missing from the error tree"
        words = (cls.__doc__ or "").replace("`", "").split()[:5]  # before any markup or "..."
        assert f"{name}" in text and " ".join(words) in text, f"{name}'s summary is missing"


def test_command_reference_is_generated_from_the_parser(built_manual):
    from shmlink.cli import build_parser

    text = _text(built_manual, "command")
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for command, sub in subparsers.choices.items():
        assert f"shmlink {command}" in text, f"`shmlink {command}` is missing"
        for action in sub._actions:
            for opt in action.option_strings:
                assert opt in text, f"`shmlink {command} {opt}` is missing"


def test_c_header_page_lists_every_header_and_function(built_manual):
    sys.path.insert(0, os.path.join(DOCS, "_ext"))
    try:
        import shmlink_docs
    finally:
        sys.path.pop(0)
    text = _text(built_manual, "c-header")
    headers = shmlink_docs.header_order()
    assert len(headers) == len(os.listdir(os.path.join(INCLUDE, "shmlink"))), \
        "a header in include/shmlink/ is not included by shmlink.h"
    for header in headers:
        assert header in text
        for name, _doc, _sig in shmlink_docs.public_functions(header):
            assert name in text, f"{name} ({header}) is missing"


# --- the C example ------------------------------------------------------------

def test_c_example_compiles_and_talks_to_python(tmp_path, name):
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler")
    exe = tmp_path / "board_hello"
    subprocess.run([cc, "-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-I", INCLUDE,
                    os.path.join(ROOT, "examples", "c", "board_hello.c"), "-o", str(exe)],
                   check=True, timeout=120)
    text = f"hello from C {uuid.uuid4().hex[:6]}"
    r = subprocess.run([str(exe), name, text], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert f"version 1: {text}" in r.stdout
    with shmlink.Board.open(name) as board:
        assert board.read_versioned() == (1, text.encode())
        board.write_text("hello from Python")
    r = subprocess.run([str(exe), name], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "version 2: hello from Python" in r.stdout
    with shmlink.Board.open(name) as board:
        board.unlink()
