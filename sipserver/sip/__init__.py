"""Pure SIP: messages, URIs, framing, validation, transactions. Never imports trio."""
