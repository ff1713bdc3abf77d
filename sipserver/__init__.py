"""sipserver: a mutual-TLS SIP signalling server."""

__version__ = "0.1.0"
SERVER_NAME = f"sipserver/{__version__}"

__all__ = ["SERVER_NAME", "__version__"]
