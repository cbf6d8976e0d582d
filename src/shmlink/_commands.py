"""The registry of ``shmlink`` sub-commands contributed by the messaging modules.

Kept apart from :mod:`shmlink.cli` so that importing ``shmlink`` does not
import argparse and the command machinery: a module only records its
command here; the CLI builds the parsers when it runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import argparse

__all__ = ["command", "COMMANDS"]

Run = Callable[["argparse.Namespace"], "int | None"]

#: name -> (help, setup(parser), run(args))
COMMANDS: dict[str, tuple[str, Callable[["argparse.ArgumentParser"], None], Run]] = {}


def command(name: str, help: str) -> Callable[[Run], Run]:
    """Register a sub-command: decorate ``run(args)``; ``run.setup(parser)`` adds arguments."""
    def deco(run: Run) -> Run:
        def setup(p: "argparse.ArgumentParser") -> None:
            s: Any = getattr(run, "setup", None)
            if s:
                s(p)
        COMMANDS[name] = (help, setup, run)
        return run
    return deco
