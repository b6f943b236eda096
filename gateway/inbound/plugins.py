"""Finding the installed routing table, so the gateway never imports a handler by name.

The handler package declares its table as a Python entry point (``pyproject.toml``)::

    [project.entry-points."carebridge.routing"]
    default = "handlers:ROUTING"

and the composition root (``gateway/serve.py``, the quarantine release commands) loads it here.
Exactly one table must be installed: two would leave it to chance which handlers run.
"""

from __future__ import annotations

from importlib.metadata import entry_points

from gateway.errors import CarebridgeError
from gateway.inbound.handling import RoutingTable

GROUP = "carebridge.routing"


class RoutingNotInstalledError(CarebridgeError):
    """No usable routing table is installed: inbound mail cannot be handled."""

    def __init__(self, problem: str) -> None:
        self.problem = problem
        super().__init__(
            f"inbound routing: {problem}; install carebridge with its handlers "
            f"('pip install -e .' in the source tree) so that exactly one package declares "
            f"an entry point in the group {GROUP!r}"
        )


def load_routing() -> RoutingTable:
    """The one :class:`RoutingTable` installed under the ``carebridge.routing`` group."""
    found = list(entry_points(group=GROUP))
    if not found:
        raise RoutingNotInstalledError("no routing table is installed")
    if len(found) > 1:
        names = ", ".join(sorted(f"{ep.name} = {ep.value}" for ep in found))
        raise RoutingNotInstalledError(f"several routing tables are installed ({names})")
    (point,) = found
    table = point.load()
    if not isinstance(table, RoutingTable):
        raise RoutingNotInstalledError(f"{point.value} is not a RoutingTable")
    return table
