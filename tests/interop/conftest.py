"""The interop suite uses the e2e fixtures: the server process and the test PKI."""

from tests.e2e.conftest import pki, start_server  # noqa: F401 -- fixtures, re-exported for pytest
