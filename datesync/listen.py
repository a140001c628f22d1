"""The web server's socket, bound before any database work and handed to uvicorn.

Binding once, rather than probing the port and letting uvicorn bind it again later, leaves no window in which
another process takes the port while start-up runs initdb, waits for a waking database, or migrates, and uvicorn
can no longer fail late with its own sys.exit(1). Until uvicorn listens on it, the bound socket refuses
connections, so a client meets a closed port, not a hang."""

from __future__ import annotations

import errno
import socket

from datesync.daemon.errors import SettingsError
from datesync.daemon.settings import Settings


def bind(settings: Settings) -> socket.socket:
    """A TCP socket bound to HOST:PORT, or SettingsError naming the variable to change."""
    host, port = settings.host, settings.port
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise SettingsError(f"HOST={host}: not an address this machine can listen on ({exc.strerror}); set HOST "
                            "to one of its addresses, such as 127.0.0.1 or 0.0.0.0") from None
    shown = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
    sock = socket.socket(family, kind, proto)
    try:
        # As uvicorn does: a restart may bind while the previous process's connections sit in TIME_WAIT; a port
        # another socket listens on is still refused.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise SettingsError(f"PORT={port}: {shown} is already in use; set PORT to a free port") from None
        if exc.errno == errno.EACCES:
            raise SettingsError(f"PORT={port}: this user may not listen on {shown} (ports below 1024 need "
                                "privileges); set PORT to 1024 or above") from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise SettingsError(f"HOST={host}: not an address of this machine; set HOST to one of its addresses, "
                                "such as 127.0.0.1 or 0.0.0.0") from None
        raise SettingsError(f"PORT={port}: cannot listen on {shown} ({exc.strerror}); check HOST and PORT") from None
    return sock
