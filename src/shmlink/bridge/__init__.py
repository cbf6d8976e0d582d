"""Routes that carry queues, topics and boards to other hosts over Eclipse Zenoh.

A bridge process runs **routes**: an *export* route reads a local
:class:`~shmlink.Queue`, :class:`~shmlink.Topic` or :class:`~shmlink.Board`
and publishes it on a Zenoh key expression; an *import* route on another
host subscribes to that key and writes into its own local object.

* Lossless routes (queues, lossless topics): nothing lost, nothing repeated,
  order kept per producer while both bridges live, across link cuts; the far
  consumer's pace reaches the local producer (back-pressure) through a
  bounded window of unacknowledged messages.
* Latest routes (boards, latest topics): the far side converges to the
  newest value; ``missed`` counts what it never saw.

What a bridge killed and restarted may lose or repeat is stated in
``docs/bridge.md``.  Zenoh is an optional extra: ``pip install 'shmlink[zenoh]'``.

Example::

    from shmlink.bridge import Bridge, load_config, parse_route
    cfg = load_config(routes=[parse_route("export", "queue:jobs=lab/jobs")],
                      listen=["tcp/0.0.0.0:7447"])
    with Bridge(cfg) as b:
        b.wait()          # until a route fails; Ctrl-C to stop
"""

from ._bridge import STATUS_PREFIX, Bridge, read_status, zenoh_config
from ._config import BridgeConfig, RouteSpec, load_config, parse_route

__all__ = ["Bridge", "BridgeConfig", "RouteSpec", "load_config", "parse_route", "read_status",
           "zenoh_config", "STATUS_PREFIX"]
