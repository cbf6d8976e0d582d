"""Build of the C core, shmlink._core.

Switches (environment variables, read at build time):

SHMLINK_ASAN=1   build with AddressSanitizer (run Python with
                 LD_PRELOAD=$(gcc -print-file-name=libasan.so))
SHMLINK_DEBUG=1  no optimisation, debug symbols

setuptools reuses object files in build/ whatever flags made them: remove
build/ when switching between these builds.
"""
import glob
import os

from setuptools import Extension, setup

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

setup(
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
        )
    ]
)
