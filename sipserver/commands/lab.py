"""`sipserver lab`: a complete working lab in one folder, for a first mutual-TLS call in
minutes. The lab PKI (as `certs lab-pki`), a configuration with a gateway and a softphone
peer and one answering number per security mode, and client configurations that are
tested as written: baresip, stunnel for TLS-less tools, and sipp scenarios."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from sipserver.commands.certs import write_lab_pki

NUMBERS = {"unsecured": "7000", "sip-secured": "7001", "secured": "7002"}
PHONE_NUMBER = "7100"  # baresip registers it and answers calls for it
PBX_NUMBERS = "72xx"  # routed on to pbx1 (sipp behind stunnel) over mutual TLS
PBX_EXAMPLE = "7200"


@dataclass(frozen=True, slots=True)
class LabPorts:
    sip: int = 5060
    tls: int = 5061
    phone: int = 5080  # baresip listens here
    tunnel: int = 5090  # stunnel takes plain TCP here and speaks mutual TLS to us as gw1
    pbx: int = 5095  # stunnel as pbx1 takes our mutual TLS here; its sipp listens on pbx + 1


def _peer_names(fqdn: str) -> tuple[str, str, str]:
    domain = fqdn.split(".", 1)[1] if fqdn.count(".") >= 2 else fqdn
    return f"gw1.{domain}", f"phone1.{domain}", f"pbx1.{domain}"


def _config(fqdn: str, gateway: str, phone: str, pbx: str, ports: LabPorts) -> str:
    plans = "".join(
        f"""
[[dial_plan]]
name = "echo-{mode}"
security = "{mode}"
numbers = ["{number}"]
from = ["gw1", "phone1"]
action = "answer"                  # sipserver answers: 180, then 200 after answer_after
answer_after = 1.0
"""
        for mode, number in NUMBERS.items()
    )
    return f"""# A lab written by `sipserver lab`. Paths are relative to this file.
# Numbers: {NUMBERS["unsecured"]} unsecured, {NUMBERS["sip-secured"]} sip-secured (mutual TLS), {NUMBERS["secured"]} secured (mutual TLS + SRTP),
# answered here; {PHONE_NUMBER}: the softphone phone1 (baresip) once it has registered, secured;
# {PBX_NUMBERS}: on to the PBX pbx1 (sipp behind stunnel), sip-secured: mutual TLS on both legs.

[server]
fqdn = "{fqdn}"
addresses = ["127.0.0.1"]
sip_port = {ports.sip}
tls_port = {ports.tls}
# {fqdn} does not resolve in a lab: our Record-Route and Contact carry this address
# instead. Peers still check our certificate against {fqdn} (their server name).
advertised_host = "127.0.0.1"

[tls]
certificate_dir = "sipserver/server"
trust_dir = "sipserver/trust"
peer_table = "state/peers.json"

[log]
level = "info"

[[peer]]
name = "gw1"                       # a gateway: sipp on UDP, or sipp through stunnel on TLS
fqdn = "{gateway}"
kind = "gateway"
addresses = ["127.0.0.1"]          # who it is on the plain SIP port

[[peer]]
name = "phone1"                    # a softphone (baresip): mutual TLS only, known by its certificate
fqdn = "{phone}"
kind = "softphone"
numbers = ["{PHONE_NUMBER}"]                # what it may register; calls reach it over its own connection

[[peer]]
name = "pbx1"                      # a PBX we route calls to: stunnel (its TLS) in front of sipp
fqdn = "{pbx}"
kind = "pbx"
addresses = ["127.0.0.1"]          # where we send to it ({pbx} does not resolve in a lab)
port = {ports.pbx}
transport = "tls"
health_check = 0                   # sipp answers calls, not OPTIONS pings; for a real PBX keep the 30 s default
{plans}
[[dial_plan]]
name = "phone1"
security = "secured"
numbers = ["{PHONE_NUMBER}"]
from = ["gw1"]
targets = ["phone1"]               # rings every flow phone1 registered for the number

[[dial_plan]]
name = "to-pbx1"
security = "sip-secured"           # mutual TLS in from gw1 and out to pbx1; RTP may stay clear
numbers = ["{PBX_NUMBERS}"]
from = ["gw1"]
targets = ["pbx1"]
"""


def _baresip(out: Path, fqdn: str, phone: str, ports: LabPorts) -> None:
    folder = out / "baresip"
    folder.mkdir(parents=True, exist_ok=True)
    peer = out / "peers" / phone
    (folder / "config").write_text(
        "# baresip for the sipserver lab: mutual TLS with phone1's certificate, SRTP (SDES),\n"
        "# no sound card: audio goes into a bridge device and comes back out of it.\n"
        "poll_method\tepoll\n"
        f"sip_listen\t127.0.0.1:{ports.phone}\n"
        f"sip_certificate\t{peer / (phone + '.pem')}\n"
        f"sip_cafile\t{peer / 'ca.crt'}\n"
        "audio_player\taubridge,nil\naudio_source\taubridge,nil\naudio_alert\taubridge,nil\n"
        "module_path\t/usr/lib/baresip/modules\n"
        "module\tg711.so\nmodule\taubridge.so\nmodule\tsrtp.so\n"
        "module\tstdio.so\n"  # the terminal: /hangup, /quit and the other commands
        "module_tmp\tuuid.so\n"
        "module_app\taccount.so\nmodule_app\tmenu.so\n"
    )
    # Registers its number over its own mutual-TLS connection (RFC 5626 outbound: the uuid
    # module gives it its +sip.instance), answers calls for it, and sends its calls there.
    (folder / "accounts").write_text(
        f"<sip:{PHONE_NUMBER}@{fqdn};transport=tls>;regint=600;sipnat=outbound;answermode=auto;"
        f'outbound="sip:127.0.0.1:{ports.tls};transport=tls";mediaenc=srtp-mand\n'
    )
    (folder / "contacts").write_text(f'"echo (secured)" <sip:{NUMBERS["secured"]}@{fqdn}>\n')


def _stunnel_pbx(out: Path, pbx: str, ports: LabPorts) -> None:
    peer = out / "peers" / pbx
    (out / "stunnel" / "pbx1.conf").write_text(
        "; stunnel as pbx1: mutual TLS in on the accept port (our certificate is required and\n"
        "; must chain to the lab CA), plain SIP over TCP on to sipp.\n"
        "foreground = yes\npid =\n\n[sip]\n"
        f"accept = 127.0.0.1:{ports.pbx}\nconnect = 127.0.0.1:{ports.pbx + 1}\n"
        f"cert = {peer / (pbx + '.pem')}\nCAfile = {peer / 'ca.crt'}\n"
        "verifyChain = yes\nrequireCert = yes\n"
    )


def _stunnel(out: Path, fqdn: str, gateway: str, ports: LabPorts) -> None:
    folder = out / "stunnel"
    folder.mkdir(parents=True, exist_ok=True)
    peer = out / "peers" / gateway
    (folder / "gw1.conf").write_text(
        "; stunnel as gw1: plain SIP over TCP in on the accept port, mutual TLS out to\n"
        "; sipserver with gw1's certificate, checking sipserver's certificate and name.\n"
        "foreground = yes\npid =\n\n[sip]\nclient = yes\n"
        f"accept = 127.0.0.1:{ports.tunnel}\nconnect = 127.0.0.1:{ports.tls}\n"
        f"cert = {peer / (gateway + '.pem')}\nCAfile = {peer / 'ca.crt'}\n"
        f"verifyChain = yes\ncheckHost = {fqdn}\n"
    )


def write_lab(out: Path, fqdn: str, ports: LabPorts) -> list[str]:
    """Write the lab into `out`; returns the commands to run next."""
    out = out.resolve()
    gateway, phone, pbx = _peer_names(fqdn)
    write_lab_pki(out, fqdn, [gateway, phone, pbx])
    (out / "sipserver.toml").write_text(_config(fqdn, gateway, phone, pbx, ports))
    (out / "state").mkdir(exist_ok=True)
    _baresip(out, fqdn, phone, ports)
    _stunnel(out, fqdn, gateway, ports)
    _stunnel_pbx(out, pbx, ports)
    sipp = out / "sipp"
    sipp.mkdir(exist_ok=True)
    for name in ("caller.xml", "caller-srtp.xml", "callee.xml"):
        with resources.as_file(resources.files("sipserver") / "lab_files" / name) as source:
            shutil.copyfile(source, sipp / name)
    secured = NUMBERS["secured"]
    return [
        f"sipserver run --config {out / 'sipserver.toml'}",
        f"baresip -f {out / 'baresip'} -e '/dial sip:{secured}@{fqdn}'"
        "    # mutual TLS + SRTP; /hangup, then /quit",
        f"stunnel4 {out / 'stunnel' / 'gw1.conf'} &  sipp -sf {sipp / 'caller.xml'} "
        f"-s {NUMBERS['sip-secured']} -t t1 -m 1 127.0.0.1:{ports.tunnel}"
        "    # as gw1 over mutual TLS",
        f"sipp -sf {sipp / 'caller.xml'} -s {NUMBERS['unsecured']} -t u1 -m 1 -i 127.0.0.1 "
        f"127.0.0.1:{ports.sip}    # as gw1 over UDP",
        f"sipp -sf {sipp / 'caller-srtp.xml'} -s {PHONE_NUMBER} -t t1 -m 1 "
        f"127.0.0.1:{ports.tunnel}    # as gw1 (stunnel running) to baresip, while it runs",
        f"stunnel4 {out / 'stunnel' / 'pbx1.conf'} &  sipp -sf {sipp / 'callee.xml'} -t t1 "
        f"-i 127.0.0.1 -p {ports.pbx + 1} -m 1    # pbx1: a callee behind its own mutual TLS",
        f"sipp -sf {sipp / 'caller.xml'} -s {PBX_EXAMPLE} -t t1 -m 1 "
        f"127.0.0.1:{ports.tunnel}    # gw1 -> sipserver -> pbx1, mutual TLS on both legs "
        "(both stunnels running)",
    ]
