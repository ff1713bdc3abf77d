"""The pure SIP core: what the server does with each message (`core.SipCore`), the
stateful proxy (`forwarder`), health checks, the call record and the events it all
returns. No trio, sockets, ssl, clocks, os or logging anywhere in its import closure."""
