"""sipserver: a mutual-TLS SIP signalling server."""

__version__ = "0.1.0"

__all__ = ["__version__"]
