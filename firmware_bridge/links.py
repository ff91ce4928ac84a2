"""Which module speaks each ``[verdict_link] kind``: adding a link is a module with an
``open_link`` function and one line here.

``open_link(settings, inspector, journal, *, heartbeat, repeat_s, abort_grace_s,
inspect_timeout_s, reopen_s)`` returns the link's server: ``run(stop)`` serves until the event
is set (and closes the journal), ``abort_now(reason)`` tells the running inspection to stop
(from a signal handler), ``describe()`` says where it listens. Each drives an
:class:`firmware_bridge.inspection.InspectionService` on the journal it is given. Modules are
imported only when their kind is served, so a head on the ASCII link needs no pymodbus.
"""

from __future__ import annotations

import importlib

MODULES = {
    "ascii": "firmware_bridge.server",
    "modbus-rtu": "firmware_bridge.modbus_link",
    "modbus-tcp": "firmware_bridge.modbus_link",
    "io": "firmware_bridge.io_link",
}


def open_link(settings, inspector, journal, **options):
    """The server of ``settings.kind`` over ``journal``."""
    return importlib.import_module(MODULES[settings.kind]).open_link(settings, inspector,
                                                                     journal, **options)
