"""sipp scenarios built per test: an INVITE with an SDP offer that expects one final
response, checks its headers with regular expressions, and ACKs it."""

from __future__ import annotations

from pathlib import Path
from xml.sax.saxutils import escape

SRTP_CRYPTO = "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz"


def _checks(checks: dict[str, str] | None, prefix: str) -> tuple[str, str]:
    actions = "".join(
        f'<ereg regexp="{escape(regexp)}" search_in="hdr" header="{name}:" check_it="true" '
        f'assign_to="{prefix}{i}"/>'
        for i, (name, regexp) in enumerate((checks or {}).items())
    )
    uses = "".join(f"[${prefix}{i}]" for i in range(len(checks or {})))
    return actions, uses


def _sdp(proto: str, crypto: bool) -> str:
    crypto_line = f"\n      {SRTP_CRYPTO}" if crypto else ""
    return f"""v=0
      o=- 1 1 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] {proto} 0{crypto_line}
"""


# The ACK for a non-2xx final response: the same hop, so the same Via (§17.1.1.3).
_ACK_FOR_FINAL = """  <send>
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
"""


# The ACK for a 2xx: its own transaction, along the Route set the 2xx recorded (§13.2.2.4).
_ACK_FOR_2XX = """  <send>
    <![CDATA[

      ACK [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      [routes]
      From: <sip:caller@gw1.example.test>;tag=[pid]T[call_number]
      [last_To:]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
"""


# The far end hangs up: its BYE, answered 200.
_BYE_ANSWERED = """  <recv request="BYE"/>
  <send>
    <![CDATA[

      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0

    ]]>
  </send>
"""


def _invite(proto: str, crypto: bool, extra: str = "") -> str:
    """The INVITE with an SDP offer that every caller scenario starts with."""
    return f"""  <send retrans="500">
    <![CDATA[

      INVITE sip:[service]@sip.example.test SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      From: <sip:caller@gw1.example.test>;tag=[pid]T[call_number]
      To: <sip:[service]@sip.example.test>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: <sip:caller@[local_ip]:[local_port];transport=[transport]>
      Max-Forwards: 70
{extra}      Content-Type: application/sdp
      Content-Length: [len]

      {_sdp(proto, crypto)}
    ]]>
  </send>
  <recv response="100" optional="true"/>
"""


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
    actions, uses = _checks(checks, "check")
    path.write_text(f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="INVITE expecting {status}">
{_invite(proto, crypto)}  <recv response="180" optional="true"/>
  <recv response="{status}">
    <action>{actions}</action>
  </recv>
{_ACK_FOR_FINAL}  <!-- keep the call open long enough to see a retransmitted final, which would be unexpected -->
  <pause milliseconds="600"/>
  <nop><action><log message="checked {uses}"/></action></nop>
</scenario>
""")
    return path


def call_uac(
    path: Path,
    *,
    proto: str = "RTP/AVP",
    crypto: bool = False,
    extra: str = "",
    checks_on_200: dict[str, str] | None = None,
    cancel: bool = False,
    shed_retry_after: int | None = None,
) -> Path:
    """INVITE, provisional(s), then either 200/ACK/BYE/200 or (cancel=True) CANCEL after
    the 180, 200 for the CANCEL, 487 and its ACK. With `shed_retry_after`, a 503 carrying
    that Retry-After (an overloaded server shedding the call) also ends the call well."""
    actions, uses = _checks(checks_on_200, "ok")
    invite = _invite(proto, crypto, extra)
    if cancel:
        body = (
            invite
            + """  <recv response="180"/>
  <send>
    <![CDATA[

      CANCEL sip:[service]@sip.example.test SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch-3];rport
      From: <sip:caller@gw1.example.test>;tag=[pid]T[call_number]
      To: <sip:[service]@sip.example.test>
      Call-ID: [call_id]
      CSeq: 1 CANCEL
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <recv response="200"/>
  <recv response="487"/>
  <send>
    <![CDATA[

      ACK sip:[service]@sip.example.test SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch-6];rport
      From: <sip:caller@gw1.example.test>;tag=[pid]T[call_number]
      [last_To:]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
"""
        )
    else:
        shed = ""
        if shed_retry_after is not None:
            # rtd 2: how long a shed call waited for its 503 (rtd 1: the answered calls)
            invite += f"""  <recv response="503" optional="true" next="shed" rtd="2">
    <action><ereg regexp="^ *{shed_retry_after}$" search_in="hdr" header="Retry-After:"
      check_it="true" assign_to="retry"/></action>
  </recv>
"""
            shed = (
                """  <nop next="end"/>
  <label id="shed"/>
"""
                + _ACK_FOR_FINAL
                + """  <nop><action><log message="shed, Retry-After [$retry]"/></action></nop>
  <label id="end"/>
"""
            )
        body = (
            invite
            + f"""  <recv response="180" optional="true"/>
  <recv response="200" rrs="true" rtd="true">
    <action>{actions}</action>
  </recv>
{_ACK_FOR_2XX}  <send retrans="500">
    <![CDATA[

      BYE [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      [routes]
      From: <sip:caller@gw1.example.test>;tag=[pid]T[call_number]
      [last_To:]
      Call-ID: [call_id]
      CSeq: 2 BYE
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <recv response="200" crlf="true"/>
  <nop><action><log message="checked {uses}"/></action></nop>
"""
            + shed
        )
    path.write_text(
        f'<?xml version="1.0" encoding="ISO-8859-1" ?>\n<scenario name="call">\n{body}</scenario>\n'
    )
    return path


def _bodiless_answer(status: str, cseq: str = "[last_CSeq:]") -> str:
    """A callee's answer without a body to the last request received (`status` is
    "486 Busy Here"); a 487 names the INVITE's CSeq, since the last request was the CANCEL."""
    return f"""  <send>
    <![CDATA[

      SIP/2.0 {status}
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]U[call_number]
      [last_Call-ID:]
      {cseq}
      Content-Length: 0

    ]]>
  </send>
"""


def call_uas(
    path: Path,
    *,
    checks_on_invite: dict[str, str] | None = None,
    cancel: bool = False,
    answer_proto: str = "RTP/AVP",
    answer_crypto: bool = False,
    answer_delay_ms: int = 0,
    refuse: str | None = None,
) -> Path:
    """The callee: 180 then (after answer_delay_ms) 200 copying Record-Route, ACK, BYE,
    200; or with cancel=True: 180, then CANCEL -> 200 and 487, ACK; or with `refuse`
    ("486 Busy Here"): 180, then that final answer, ACK."""
    actions, uses = _checks(checks_on_invite, "in")
    reply = """[last_Via:]
      [last_Record-Route:]
      [last_From:]
      [last_To:];tag=[pid]U[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <sip:callee@[local_ip]:[local_port];transport=[transport]>"""
    body = f"""  <recv request="INVITE" crlf="true">
    <action>{actions}</action>
  </recv>
  <send>
    <![CDATA[

      SIP/2.0 180 Ringing
      {reply}
      Content-Length: 0

    ]]>
  </send>
"""
    if refuse is not None:
        body += _bodiless_answer(refuse) + '  <recv request="ACK"/>\n'
    elif cancel:
        body += (
            '  <recv request="CANCEL"/>\n'
            + _bodiless_answer("200 OK")
            + _bodiless_answer("487 Request Terminated", cseq="CSeq: 1 INVITE")
            + '  <recv request="ACK"/>\n'
        )
    else:
        if answer_delay_ms:
            body += f'  <pause milliseconds="{answer_delay_ms}"/>\n'
        body += f"""  <send retrans="500">
    <![CDATA[

      SIP/2.0 200 OK
      {reply}
      Content-Type: application/sdp
      Content-Length: [len]

      {_sdp(answer_proto, answer_crypto)}
    ]]>
  </send>
  <recv request="ACK" crlf="true"/>
{_BYE_ANSWERED}"""
    body += f"""  <nop><action><log message="checked {uses}"/></action></nop>
  <pause milliseconds="300"/>
"""
    path.write_text(
        f'<?xml version="1.0" encoding="ISO-8859-1" ?>\n<scenario name="callee">\n{body}</scenario>\n'
    )
    return path


def call_uac_answered_then_hung_up(
    path: Path, *, proto: str = "RTP/AVP", crypto: bool = False, answer_body: str = "."
) -> Path:
    """INVITE, 180, 200 (whose SDP must match `answer_body`), ACK; then the far end hangs
    up: BYE received and answered 200."""
    path.write_text(f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="answered, then hung up by the far end">
{_invite(proto, crypto)}  <recv response="180" optional="true"/>
  <recv response="200" rrs="true">
    <action><ereg regexp="{escape(answer_body)}" search_in="body" check_it="true" assign_to="sdp"/></action>
  </recv>
{_ACK_FOR_2XX}{_BYE_ANSWERED}  <nop><action><log message="answer [$sdp]"/></action></nop>
</scenario>
""")
    return path
