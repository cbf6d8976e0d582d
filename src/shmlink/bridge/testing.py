"""Two network namespaces joined by a veth pair: two "hosts" on one machine.

Tests, benchmarks and the README's example use :class:`NetnsPair` to run a
bridge on each side of a real network link (packets cross the veth pair, so
cutting the link with :meth:`NetnsPair.link_down` breaks TCP sessions the
way a cable pulled between two hosts does).  It needs root and ``ip netns``;
:func:`netns_unavailable` says why it cannot run here, or returns None.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from typing import Any, Sequence

__all__ = ["NetnsPair", "netns_unavailable"]


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=check)


def netns_unavailable() -> str | None:
    """Why two network namespaces cannot be made here, or None when they can."""
    if shutil.which("ip") is None:
        return "the 'ip' command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"slp{uuid.uuid4().hex[:8]}"
    try:
        r = _ip("netns", "add", probe, check=False)
        if r.returncode != 0:
            return f"'ip netns add' failed: {r.stderr.strip()}"
    finally:
        _ip("netns", "del", probe, check=False)
    return None


class NetnsPair:
    """Namespaces ``a`` and ``b`` with addresses ``addr_a`` / ``addr_b`` on one veth link.

    A context manager: entering creates everything, leaving removes it (also
    after a failure part-way).  Names are unique per instance.
    """

    def __init__(self, subnet: str = "10.213") -> None:
        tag = uuid.uuid4().hex[:6]
        self.a = f"slA{tag}"
        self.b = f"slB{tag}"
        self.veth_a = f"vA{tag}"
        self.veth_b = f"vB{tag}"
        # a /30 picked from the tag so two pairs at once do not share addresses
        n = int(tag, 16) % 250
        third = 1 + n
        self.addr_a = f"{subnet}.{third}.1"
        self.addr_b = f"{subnet}.{third}.2"
        self._made: list[str] = []

    def __enter__(self) -> "NetnsPair":
        try:
            _ip("netns", "add", self.a)
            self._made.append(self.a)
            _ip("netns", "add", self.b)
            self._made.append(self.b)
            _ip("link", "add", self.veth_a, "type", "veth", "peer", "name", self.veth_b)
            _ip("link", "set", self.veth_a, "netns", self.a)
            _ip("link", "set", self.veth_b, "netns", self.b)
            for ns, dev, addr in ((self.a, self.veth_a, self.addr_a),
                                  (self.b, self.veth_b, self.addr_b)):
                _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
                _ip("-n", ns, "link", "set", dev, "up")
                _ip("-n", ns, "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Remove both namespaces (the veth pair goes with them); idempotent."""
        while self._made:
            ns = self._made.pop()
            # processes still inside keep a namespace's network alive: end them first
            r = _ip("netns", "pids", ns, check=False)
            for pid in r.stdout.split():
                try:
                    os.kill(int(pid), 9)
                except (ProcessLookupError, ValueError):
                    pass
            _ip("netns", "del", ns, check=False)

    def cmd(self, side: str, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside namespace ``side`` (``"a"`` or ``"b"``)."""
        return ["ip", "netns", "exec", self.a if side == "a" else self.b, *argv]

    def popen(self, side: str, argv: Sequence[str], **kw: Any) -> "subprocess.Popen[Any]":
        """Start ``argv`` inside namespace ``side``."""
        return subprocess.Popen(self.cmd(side, argv), **kw)

    def run(self, side: str, argv: Sequence[str], **kw: Any) -> "subprocess.CompletedProcess[Any]":
        """Run ``argv`` inside namespace ``side`` to the end."""
        return subprocess.run(self.cmd(side, argv), **kw)

    def link_down(self) -> None:
        """Cut the link (both ends down): packets stop, TCP sessions time out."""
        _ip("-n", self.a, "link", "set", self.veth_a, "down")
        _ip("-n", self.b, "link", "set", self.veth_b, "down")

    def link_up(self) -> None:
        """Restore the link."""
        _ip("-n", self.a, "link", "set", self.veth_a, "up")
        _ip("-n", self.b, "link", "set", self.veth_b, "up")
