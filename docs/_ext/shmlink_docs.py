"""Sphinx directives that generate manual pages from shmlink's own code, so they cannot drift.

``shmlink-error-tree``
    The exception hierarchy of :mod:`shmlink.errors`: every public class
    under ``ShmlinkError``, nested by inheritance, each with the builtins it
    also is and the first line of its docstring.
``shmlink-c-headers``
    One section per protocol header, in the order ``shmlink.h`` includes
    them: the headers it includes, its opening comment, and every public
    function (``static inline shmlink_*``, not ending in ``_``) with the
    comment above it and its signature.

Both emit reStructuredText and parse it in place, so use them from an
``{eval-rst}`` block in a Markdown page.
"""

from __future__ import annotations

import os
import re
import textwrap

from docutils import nodes
from docutils.parsers.rst import Directive
from docutils.statemachine import StringList
from sphinx.util.nodes import nested_parse_with_titles

import shmlink
from shmlink import errors

INCLUDE = os.path.join(os.path.dirname(shmlink.__file__), "include")


class _Generated(Directive):
    has_content = False

    def lines(self) -> list[str]:
        raise NotImplementedError

    def run(self) -> list[nodes.Node]:
        node = nodes.section() if self.titles else nodes.container()
        source = f"<{self.name}>"
        nested_parse_with_titles(self.state, StringList(self.lines(), source=source), node)
        return node.children

    titles = False


# --- the error tree -----------------------------------------------------------


def _public_errors() -> list[type]:
    return [getattr(errors, n) for n in errors.__all__]


def _builtin_bases(cls: type) -> list[str]:
    """The builtins an error also is, most specific only (``PermissionError``, not ``OSError``)."""
    found = [k for k in cls.__mro__[1:]
             if k.__module__ == "builtins" and k not in (Exception, BaseException, object)]
    return [k.__name__ for k in found if not any(o is not k and issubclass(o, k) for o in found)]


def _summary(cls: type) -> str:
    doc = (cls.__doc__ or "").strip()
    first = doc.split("\n\n", 1)[0]
    return " ".join(first.split())


def _public_parent(cls: type, public: set[type]) -> type | None:
    """The nearest public shmlink error this class derives from (skipping private bases)."""
    for k in cls.__mro__[1:]:
        if k in public:
            return k
    return None


class ErrorTree(_Generated):
    """``shmlink-error-tree``: the hierarchy under ShmlinkError, generated from shmlink.errors."""

    def lines(self) -> list[str]:
        classes = _public_errors()
        public = set(classes)
        children: dict[type | None, list[type]] = {}
        for cls in classes:
            children.setdefault(_public_parent(cls, public), []).append(cls)
        out: list[str] = []

        def emit(cls: type, depth: int) -> None:
            pad = "  " * depth
            also = _builtin_bases(cls)
            also_txt = f" (also {', '.join(f'``{b}``' for b in also)})" if also else ""
            out.append(f"{pad}- :exc:`~shmlink.errors.{cls.__name__}`{also_txt}: {_summary(cls)}")
            kids = children.get(cls, [])
            if kids:
                out.append("")
                for kid in kids:
                    emit(kid, depth + 1)
                out.append("")

        for root in children.get(None, []):
            emit(root, 0)
        return out


# --- the C headers ------------------------------------------------------------

_INCLUDE_RE = re.compile(r'^#include "([^"]+)"', re.M)
_FUNC_RE = re.compile(r"^static inline ([^;{}()]*?)\b(shmlink_\w+)\s*\(", re.M)


def header_order() -> list[str]:
    """The sub-headers in the order shmlink.h includes them (``shmlink/ring.h`` ...)."""
    with open(os.path.join(INCLUDE, "shmlink.h")) as f:
        return _INCLUDE_RE.findall(f.read())


def _opening_comment(text: str) -> str:
    m = re.match(r"\s*/\*(.*?)\*/", text, re.S)
    if not m:
        return ""
    body = [re.sub(r"^ ?\* ?", "", ln) for ln in m.group(1).splitlines()]
    return textwrap.dedent("\n".join(body)).strip("\n")


def _comment_before(text: str, pos: int) -> str:
    """The block comment that ends on the line just above ``pos``, as plain lines."""
    before = text[:pos].rstrip()
    if not before.endswith("*/"):
        return ""
    start = before.rfind("/*")
    if start < 0 or text[start - 1:start] not in ("\n", ""):
        return ""
    body = before[start + 2:-2]
    lines = [re.sub(r"^\s*\* ?", "", ln).rstrip() for ln in body.splitlines()]
    return "\n".join(ln for ln in lines).strip()


def _signature(text: str, m: re.Match[str]) -> str:
    """``type name(params)`` of a definition, its parameters on one line."""
    depth, i = 0, m.end() - 1
    while i < len(text):
        c = text[i]
        depth += c == "("
        depth -= c == ")"
        i += 1
        if depth == 0:
            break
    params = " ".join(text[m.end():i - 1].split())
    return f"{' '.join(m.group(1).split())} {m.group(2)}({params})".replace("* ", "*").replace(
        " *", " *")


def public_functions(header: str) -> list[tuple[str, str, str]]:
    """(name, comment, signature) of each public function defined in ``header``."""
    with open(os.path.join(INCLUDE, header)) as f:
        text = f.read()
    out = []
    for m in _FUNC_RE.finditer(text):
        name = m.group(2)
        if name.endswith("_"):
            continue  # internal helpers: shmlink_ring_gather_one_ ...
        out.append((name, _comment_before(text, m.start()), _signature(text, m)))
    return out


class CHeaders(_Generated):
    """``shmlink-c-headers``: a section per protocol header, generated from the files."""

    titles = True

    def lines(self) -> list[str]:
        out: list[str] = []
        for header in header_order():
            with open(os.path.join(INCLUDE, header)) as f:
                text = f.read()
            self.state.document.settings.record_dependencies.add(os.path.join(INCLUDE, header))
            includes = [h for h in _INCLUDE_RE.findall(text)]
            out += [f".. _c-{os.path.basename(header)[:-2]}:", "", f"``{header}``",
                    "-" * (len(header) + 4), ""]
            if includes:
                out += ["Includes " + ", ".join(f"``{h}``" for h in includes) + ".", ""]
            comment = _opening_comment(text)
            if comment:
                out += ["::", ""] + ["   " + ln if ln else "" for ln in comment.splitlines()] + [""]
            funcs = public_functions(header)
            if funcs:
                out += [".. code-block:: c", ""]
                for _name, doc, sig in funcs:
                    if doc:
                        out += ["   /* " + ln if k == 0 else "    * " + ln if ln else "    *"
                                for k, ln in enumerate(doc.splitlines())]
                        out[-1] += " */"
                    out += [f"   {sig};", ""]
            else:
                out += ["No functions: macros and types only.", ""]
        return out


def setup(app):  # type: ignore[no-untyped-def]
    app.add_directive("shmlink-error-tree", ErrorTree)
    app.add_directive("shmlink-c-headers", CHeaders)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
