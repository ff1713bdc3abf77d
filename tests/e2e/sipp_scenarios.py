"""sipp scenarios built per test: an INVITE with an SDP offer that expects one final
response, checks its headers with regular expressions, and ACKs it."""

from __future__ import annotations

from pathlib import Path
from xml.sax.saxutils import escape

SRTP_CRYPTO = "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz"


def invite_expecting(
    path: Path,
    status: int,
    *,
    proto: str = "RTP/AVP",
    crypto: bool = False,
    checks: dict[str, str] | None = None,
) -> Path:
    """Write the scenario; `checks` maps a header name to a POSIX extended regexp its value
    (which sipp gives with its leading space) must match, or sipp fails the call."""
    actions = "".join(
        f'<ereg regexp="{escape(regexp)}" search_in="hdr" header="{name}:" check_it="true" '
        f'assign_to="check{i}"/>'
        for i, (name, regexp) in enumerate((checks or {}).items())
    )
    uses = "".join(f"[$check{i}]" for i in range(len(checks or {})))
    crypto_line = f"\n      {SRTP_CRYPTO}" if crypto else ""
    path.write_text(f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="INVITE expecting {status}">
  <send retrans="500">
    <![CDATA[

      INVITE sip:[service]@sip.example.test SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      From: <sip:caller@gw1.example.test>;tag=[pid]T[call_number]
      To: <sip:[service]@sip.example.test>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: <sip:caller@[local_ip]:[local_port];transport=[transport]>
      Max-Forwards: 70
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=- 1 1 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] {proto} 0{crypto_line}

    ]]>
  </send>
  <recv response="100" optional="true"/>
  <recv response="{status}">
    <action>{actions}</action>
  </recv>
  <send>
    <![CDATA[

      ACK sip:[service]@sip.example.test SIP/2.0
      [last_Via:]
      From: <sip:caller@gw1.example.test>;tag=[pid]T[call_number]
      [last_To:]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <!-- keep the call open long enough to see a retransmitted final, which would be unexpected -->
  <pause milliseconds="600"/>
  <nop><action><log message="checked {uses}"/></action></nop>
</scenario>
""")
    return path
