"""The values some configuration keys choose from."""

from __future__ import annotations

import enum


class Security(enum.StrEnum):
    """A dial plan's VoIP security mode (Exchange UM's three settings)."""

    UNSECURED = "unsecured"
    SIP_SECURED = "sip-secured"
    SECURED = "secured"

    @property
    def requires_tls(self) -> bool:
        return self is not Security.UNSECURED


class PeerKind(enum.StrEnum):
    GATEWAY = "gateway"
    PBX = "pbx"
    SOFTPHONE = "softphone"  # registers its numbers; reached over the flow it registered on


class Action(enum.StrEnum):
    PROXY = "proxy"
    REDIRECT = "redirect"
    ANSWER = "answer"  # sipserver answers the call itself (an echo-test number for interop)


class UnknownSource(enum.StrEnum):
    REJECT = "reject"  # 403 with a Warning that says why
    DROP = "drop"  # no answer at all


class LogLevel(enum.StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class LogFormat(enum.StrEnum):
    AUTO = "auto"
    JSON = "json"
    CONSOLE = "console"


class TlsVersion(enum.StrEnum):
    V1_2 = "1.2"
    V1_3 = "1.3"


class KeyType(enum.StrEnum):
    EC_P256 = "ec-p256"
    RSA_2048 = "rsa-2048"
