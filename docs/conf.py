"""Sphinx configuration of the shmlink reference manual.

Build:  python -m sphinx -W --keep-going -b html docs docs/_build/html
(``pip install -e '.[docs]'`` first; ``tests/test_docs.py`` does the same build).
Pages are Markdown (MyST); the API reference comes from the docstrings
(autodoc + napoleon, numpydoc style); the error tree, the command reference
and the C header pages are generated from the code (``_ext/shmlink_docs.py``
and sphinx-argparse), so they cannot drift from it.
"""

from __future__ import annotations

import os
import sys

import importlib.util

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "_ext"))
if importlib.util.find_spec("shmlink") is None:
    # not installed: this checkout's package, built in place (python setup.py build_ext --inplace)
    sys.path.insert(0, os.path.join(os.path.dirname(HERE), "src"))

import shmlink  # noqa: E402  (the installed one documents itself: what users get)

project = "shmlink"
author = "the shmlink authors"
copyright = "the shmlink authors"
release = shmlink.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinxarg.ext",
    "shmlink_docs",
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "README.md"]
templates_path: list[str] = []

# MyST: ```{directive} fences, $ nothing else; headings get anchors for links
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

# autodoc: numpydoc docstrings, members in source order, signatures with types
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
napoleon_use_ivar = True  # an "Attributes" section must not document properties twice
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_class_signature = "separated"
autodoc_preserve_defaults = True
# classes are made by named constructors (create, open, ...): calling one is a TypeError
autodoc_default_options = {"exclude-members": "__init__"}
add_module_names = False

# "--json" stays two hyphens (no en dash); quotes and ellipses are still made typographic
smartquotes_action = "qe"

html_theme = "alabaster"
html_title = f"shmlink {release}"
html_static_path: list[str] = []
html_theme_options = {"description": "IPC through named shared memory", "fixed_sidebar": False}
