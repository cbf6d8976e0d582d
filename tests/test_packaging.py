"""Packaging: the version has one source, the sdist is complete, and a wheel built
from it installs and works on a machine without a C compiler.

The module builds the sdist of this source tree once (setuptools' build
backend, no download), unpacks it, builds a wheel *from the unpacked sdist*
for the running interpreter, and installs that wheel into a fresh virtual
environment.  Then pytest runs, in that environment, a fast subset of the
unpacked sdist's own tests, once as it is and once with a ``PATH`` that has
no compiler on it.  The whole-suite runs against every wheel and from the
sdist are ``tools/build_wheels.py --test --sdist-test`` (the wheels stage
of ``.ci/run``).

Skipped outside a source tree (the suite copied next to an installed
wheel), or where setuptools is older than the build backend needs.
"""

from __future__ import annotations

import glob
import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile

import pytest

import shmlink

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE_TREE = os.path.exists(os.path.join(ROOT, "setup.py"))

pytestmark = [pytest.mark.skipif(not SOURCE_TREE, reason="not a source tree (no setup.py)"),
              pytest.mark.skipif("libasan" in os.environ.get("LD_PRELOAD", ""),
                                 reason="packaging is checked by the uninstrumented pass"),
              pytest.mark.timeout(600)]  # builds and installs

# Fast subsets: C peers and the examples (Python pairs and the C one) from the sdist, with a
# compiler; without one, the C peers, the header compile tests and the C example (all skip:
# "no C compiler"), and the error tree.
SDIST_SUBSET = ["tests/test_c_peers.py", "tests/test_examples.py"]
WHEEL_SUBSET = ["tests/test_c_peers.py", "tests/test_c_header.py", "tests/test_errors.py",
                "tests/test_examples.py::test_c_interop_example"]


def _setuptools_ok() -> bool:
    try:
        major = int(importlib.metadata.version("setuptools").split(".")[0])
    except importlib.metadata.PackageNotFoundError:
        return False
    return major >= 77


def _tools():
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    try:
        import build_wheels
    finally:
        sys.path.pop(0)
    return build_wheels


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "SHMLINK_ASAN", "SHMLINK_DEBUG", "LD_PRELOAD")}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(sdist path, unpacked sdist tree, wheel path, venv python) for this interpreter."""
    if not _setuptools_ok():
        pytest.skip("building needs setuptools >= 77 here (pip install -U setuptools)")
    tmp = tmp_path_factory.mktemp("packaging")
    out = tmp / "sdist"
    r = subprocess.run([sys.executable, "-c",
                        "import sys; from setuptools import build_meta as b; "
                        "print(b.build_sdist(sys.argv[1]))", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300, env=_env())
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (sdist,) = glob.glob(str(out / "*.tar.gz"))
    with tarfile.open(sdist) as tf:
        tf.extractall(tmp / "unpacked")
    (tree,) = glob.glob(str(tmp / "unpacked" / "shmlink-*"))
    # the wheel, from the unpacked sdist: a file the sdist lacks breaks this build too
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                        "--no-build-isolation", "--wheel-dir", str(tmp / "wheel"), tree],
                       capture_output=True, text=True, timeout=600, env=_env())
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (wheel,) = glob.glob(str(tmp / "wheel" / "*.whl"))
    # a fresh environment: the wheel installed, the test tools seen through a .pth line
    # (a plain path: the checkout's editable shmlink is not activated by it)
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    vpy = str(venv / "bin" / "python")
    r = subprocess.run([sys.executable, "-m", "pip", "--python", vpy, "install", "-q",
                        "--no-deps", "--no-index", wheel],
                       capture_output=True, text=True, timeout=300, env=_env())
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    site = subprocess.run([vpy, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          capture_output=True, text=True, check=True).stdout.strip()
    pytest_home = os.path.dirname(os.path.dirname(pytest.__file__))
    with open(os.path.join(site, "zz_test_tools.pth"), "w") as f:
        f.write(pytest_home + "\n")
    return sdist, tree, wheel, vpy


def _pytest(vpy: str, cwd: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([vpy, "-m", "pytest", "-p", "no:cacheprovider", "--rootdir", cwd, *args],
                          cwd=cwd, capture_output=True, text=True, timeout=600, env=env)


def _summary(r: subprocess.CompletedProcess) -> dict[str, int]:
    last = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
    return {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?)", last)}


# ---- the abi3 build ------------------------------------------------------------

def _include_dirs() -> list[str]:
    """Python.h directories on this machine: the running interpreter's and pyenv's."""
    import sysconfig
    found = {sysconfig.get_paths()["include"]}
    found.update(glob.glob(os.path.expanduser("~/.pyenv/versions/3.*/include/python3.*")))
    return sorted(d for d in found if os.path.exists(os.path.join(d, "Python.h")))


@pytest.mark.skipif(shutil.which("gcc") is None, reason="no C compiler")
def test_abi3_build_returns_singletons_with_a_reference(tmp_path):
    """The abi3 build targets the limited API of 3.11, so any 3.11+ may build the wheel.
    CPython's 3.12 and 3.13 headers from before gh-134989 return None, True and False
    from Py_RETURN_* without a reference; built with them, the module freed None on 3.11
    (seen: a _core built by a 3.12.1 editable install aborted 3.11 at exit).  internal.h
    spells the macros with Py_NewRef: checked with every interpreter's headers here."""
    probe = tmp_path / "probe.c"
    probe.write_text('#include "internal.h"\n'
                     "PyObject *sl_probe_none(void) { Py_RETURN_NONE; }\n"
                     "PyObject *sl_probe_true(void) { Py_RETURN_TRUE; }\n"
                     "PyObject *sl_probe_false(void) { Py_RETURN_FALSE; }\n"
                     "PyObject *sl_probe_ni(void) { Py_RETURN_NOTIMPLEMENTED; }\n")
    dirs = _include_dirs()
    assert dirs
    for inc in dirs:
        r = subprocess.run(["gcc", "-E", "-P", "-DPy_LIMITED_API=0x030B0000", f"-I{inc}",
                            "-I" + os.path.join(ROOT, "src", "shmlink", "include"),
                            "-I" + os.path.join(ROOT, "src", "shmlink", "_csrc"), str(probe)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, (inc, r.stderr[-2000:])
        for fn in ("sl_probe_none", "sl_probe_true", "sl_probe_false", "sl_probe_ni"):
            body = r.stdout[r.stdout.rindex(fn):]
            body = body[:body.index("}")]
            assert "NewRef(" in body, (inc, body)


# ---- one source for the version ------------------------------------------------

def test_the_version_is_written_once():
    with open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8") as f:
        text = f.read()
    project = text.split("[project]", 1)[1].split("\n[", 1)[0]
    assert not re.search(r"^version\s*=", project, re.M), "pyproject.toml writes a version"
    assert re.search(r'^dynamic\s*=\s*\[[^]]*"version"', project, re.M)
    assert 'attr = "shmlink.__version__"' in text
    assert re.fullmatch(r"\d+\.\d+\.\d+([ab]|rc)?\d*", shmlink.__version__)


def test_cli_version_metadata_and_module_agree():
    r = subprocess.run([sys.executable, "-m", "shmlink", "--version"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["shmlink", shmlink.__version__]
    assert importlib.metadata.version("shmlink") == shmlink.__version__, (
        "the installed metadata is stale: reinstall (pip install -e .)")


# ---- the sdist --------------------------------------------------------------------

def test_sdist_holds_every_tracked_file(built):
    sdist = built[0]
    with tarfile.open(sdist) as tf:
        names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    for need in ("LICENSE", "CHANGELOG.md", "CONTRIBUTING.md", "README.md", "setup.py",
                 "MANIFEST.in", ".ci/run", "tests/conftest.py", "tests/support.py",
                 "tests/typed_program.py", "tests/workers/__init__.py", "tests/c/ring_peer.c",
                 "examples/c/echo_upper.c", "docs/design.md", "benchmarks/__main__.py",
                 "tools/build_wheels.py", "src/shmlink/_csrc/internal.h"):
        assert need in names, f"the sdist lacks {need}"
    if shutil.which("git") and os.path.exists(os.path.join(ROOT, ".git")):
        r = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
        if r.returncode == 0:
            tracked = {n for n in r.stdout.splitlines()
                       if n not in (".gitignore",) and os.path.exists(os.path.join(ROOT, n))}
            missing = sorted(tracked - names)
            assert not missing, f"tracked files missing from the sdist: {missing}"
    assert not [n for n in names if n.endswith((".so", ".o", ".pyc"))], "build output in the sdist"


def test_pytest_collects_every_module_of_the_unpacked_sdist(built):
    _, tree, _, vpy = built
    r = _pytest(vpy, tree, "--collect-only", "-q", env=_env())
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    modules = {os.path.basename(p) for p in glob.glob(os.path.join(tree, "tests", "test_*.py"))}
    collected = {line.split("::")[0].rsplit("/", 1)[-1] for line in r.stdout.splitlines()
                 if "::" in line}
    assert collected == modules, f"not collected: {sorted(modules - collected)}"


def test_the_unpacked_sdist_passes_its_tests(built):
    _, tree, _, vpy = built
    r = _pytest(vpy, tree, "-q", *SDIST_SUBSET, env=_env())
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert _summary(r).get("passed", 0) > 0


# ---- the wheel ----------------------------------------------------------------

def test_wheel_tag_and_contents(built):
    wheel = built[2]
    tag = os.path.basename(wheel)[:-4].split("-", 2)[2]
    if sys.version_info >= (3, 11) and os.environ.get("SHMLINK_LIMITED_API", "1") != "0":
        assert tag.startswith("cp311-abi3-"), tag
    else:
        v = f"cp{sys.version_info[0]}{sys.version_info[1]}"
        assert tag.startswith(f"{v}-{v}-"), tag
    names = zipfile.ZipFile(wheel).namelist()
    assert not [n for n in names if "/_csrc/" in n], "the binding's sources are in the wheel"
    for need in ("shmlink/py.typed", "shmlink/_core.pyi", "shmlink/include/shmlink.h",
                 "shmlink/include/shmlink/ring.h"):
        assert need in names, f"the wheel lacks {need}"
    assert [n for n in names if re.fullmatch(r"shmlink/_core\..*so", n)]
    assert [n for n in names if n.endswith(".dist-info/licenses/LICENSE")
            or n.endswith(".dist-info/LICENSE")], "no LICENSE in the wheel's metadata"


def test_the_wheel_works_without_a_compiler(built, tmp_path):
    _, tree, wheel, vpy = built
    shadow = _tools().compiler_free_bin(str(tmp_path))
    env = _env(PATH=os.path.dirname(vpy) + os.pathsep + shadow)
    probe = subprocess.run(["sh", "-c", "command -v gcc || command -v cc"], env=env,
                           capture_output=True, text=True)
    assert probe.returncode != 0, f"a compiler on the test PATH: {probe.stdout}"
    # the installed shmlink, not the checkout's
    r = subprocess.run([vpy, "-c", "import shmlink, shmlink._core as c; print(c.__file__)"],
                       cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert os.path.dirname(os.path.dirname(vpy)) in r.stdout and ROOT not in r.stdout, r.stdout
    r = subprocess.run([os.path.join(os.path.dirname(vpy), "shmlink"), "--version"],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.stdout.split() == ["shmlink", shmlink.__version__], r.stdout + r.stderr
    # the suite from a copy of the sdist's tests: the C peers skip and say why
    suite = _tools().suite_copy(tree, str(tmp_path))
    r = _pytest(vpy, suite, "-q", "-rs", *WHEEL_SUBSET, env=env)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    got = _summary(r)
    assert got.get("passed", 0) > 0 and got.get("skipped", 0) > 0, r.stdout[-2000:]
    assert "no C compiler" in r.stdout
