"""OpenSSL X509_V_ERR codes, turned into the refusal reasons we log."""

from __future__ import annotations

# code -> (reason key, human text)
_REASONS: dict[int, tuple[str, str]] = {
    2: ("untrusted_chain", "issuer certificate not found in trust_dir"),
    7: ("untrusted_chain", "certificate signature failure"),
    9: ("certificate_not_yet_valid", "certificate is not yet valid"),
    10: ("certificate_expired", "certificate has expired"),
    18: ("untrusted_chain", "self-signed certificate not in trust_dir"),
    19: ("untrusted_chain", "self-signed CA certificate in chain is not in trust_dir"),
    20: ("untrusted_chain", "issuer not found in trust_dir (unable to get local issuer)"),
    21: ("untrusted_chain", "unable to verify the first certificate"),
    23: ("certificate_revoked", "certificate is revoked"),
    24: ("untrusted_chain", "invalid CA certificate"),
    26: ("certificate_wrong_purpose", "certificate not allowed for TLS client authentication"),
}


def describe_verify_error(code: int) -> tuple[str, str]:
    return _REASONS.get(code, ("untrusted_chain", f"certificate verification error {code}"))
