"""The rendezvous store of a distributed run, hosted by the process that starts its ranks.

As ``torchrun``'s agent does: the starting process binds a ``TCPStore`` to a port the system
picks (no window between choosing a free port and binding it, in which another run's rank,
or any other program, could take it), and every rank joins it as a client
(``TORCHELASTIC_USE_AGENT_STORE``, read by ``torch.distributed``'s ``env://`` and ``tcp://``
rendezvous when ``MASTER_ADDR``/``MASTER_PORT`` name that store).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Union

if TYPE_CHECKING:  # torch.distributed: imported when a store is made
    from torch.distributed import TCPStore

LOOPBACK = "127.0.0.1"
AGENT_STORE = "TORCHELASTIC_USE_AGENT_STORE"


def host_store(world: int) -> TCPStore:
    """A store server on a loopback port of the system's choosing (its ``port``); it serves
    while the object lives."""
    from torch.distributed import TCPStore

    return TCPStore(LOOPBACK, 0, world, is_master=True, wait_for_workers=False)


def client_env(port: Union[int, str]) -> dict[str, str]:
    """The variables that make a rank join the store at ``port`` as a client."""
    return {"MASTER_ADDR": LOOPBACK, "MASTER_PORT": str(port), AGENT_STORE: "True"}
