"""The trio shell around the pure core: `app.Server` wires listeners, the connection
pool, credentials, reload, drain and the admin listener; each lives in its own module."""

from sipserver.server.app import Server
from sipserver.transport.listeners import Listener, StartupError

__all__ = ["Listener", "Server", "StartupError"]
