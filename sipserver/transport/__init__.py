"""trio adapters: sockets and TLS around the pure core."""
