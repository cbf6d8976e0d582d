"""Build of the C core, shmlink._core.

Switches (environment variables, read at build time):

SHMLINK_ASAN=1   build with AddressSanitizer (run Python with
                 LD_PRELOAD=$(gcc -print-file-name=libasan.so))
SHMLINK_DEBUG=1  no optimisation, debug symbols
SHMLINK_LIMITED_API=0
                 on Python >= 3.11, build against the full C API instead
                 of the limited API of 3.11 (the default there: one
                 _core.abi3.so and one cp311-abi3 wheel serve 3.11 and
                 later; 3.10 always gets a version-specific build)

setuptools reuses object files in build/ whatever flags made them: remove
build/ when switching between these builds.
"""
import glob
import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

cflags = ["-std=gnu11", "-Wall", "-Wextra", "-Werror", "-Wno-missing-field-initializers",
          "-Wno-unused-parameter", "-Wno-cast-function-type"]
ldflags = []
if os.environ.get("SHMLINK_DEBUG") == "1":
    cflags += ["-O0", "-g3"]
else:
    cflags += ["-O2"]
if os.environ.get("SHMLINK_ASAN") == "1":
    cflags += ["-fsanitize=address", "-fno-omit-frame-pointer", "-g"]
    ldflags += ["-fsanitize=address"]

# The limited API has Py_buffer and the buffer slots from 3.11 on (the
# binding's shims for the few full-API macros it uses: _csrc/internal.h).
LIMITED = sys.version_info >= (3, 11) and os.environ.get("SHMLINK_LIMITED_API", "1") != "0"


class BuildExt(build_ext):
    """build_ext that removes an in-place _core of the other flavour first.

    The import system prefers _core.cpython-3XY-*.so to _core.abi3.so: a stale
    one of either kind left in src/shmlink would shadow the fresh build.
    """

    def run(self):
        if self.inplace:
            for ext in self.extensions:
                fresh = os.path.basename(self.get_ext_filename(ext.name))
                pkg = os.path.join("src", *ext.name.split(".")[:-1])
                for old in glob.glob(os.path.join(pkg, ext.name.rsplit(".", 1)[-1] + ".*.so")):
                    if os.path.basename(old) != fresh:
                        os.remove(old)
        super().run()


setup(
    cmdclass={"build_ext": BuildExt},
    options={"bdist_wheel": {"py_limited_api": "cp311"}} if LIMITED else {},
    ext_modules=[
        Extension(
            "shmlink._core",
            # the binding, one file per concern (map in _csrc/module.c)
            sources=sorted(glob.glob("src/shmlink/_csrc/*.c")),
            include_dirs=["src/shmlink/include"],
            depends=["src/shmlink/include/shmlink.h",
                     *sorted(glob.glob("src/shmlink/include/shmlink/*.h")),
                     *sorted(glob.glob("src/shmlink/_csrc/*.h"))],
            extra_compile_args=cflags,
            extra_link_args=ldflags,
            py_limited_api=LIMITED,
            define_macros=[("Py_LIMITED_API", "0x030B0000")] if LIMITED else [],
        )
    ]
)
