"""A real OpenLDAP server for the sign-in tests: Debian's `slapd` (`scripts/setup test`), run as
a process of the test's own, with its configuration (cn=config) and database in a temporary
folder and listening on a free loopback port; stopped, and its folder removed, on every exit path.

The directory of `dc=uni,dc=test` (loaded with `slapadd` before the server starts):
- ou=services: `cn=kubekvm`, the account KubeKVM searches as (only it may read people and groups);
- ou=people: tina (in `staff`), sam, sara, dora (in `students`), alice (an admin by name, in no
  group), nina (in no group), ursula (disabled: outside the user filter, `employeeType:
  disabled`, as AD's filters leave out `userAccountControl`'s disabled bit), lena (locked by an
  admin: `pwdAccountLockedTime`, the password policy's attribute (its module loaded for the
  schema), also outside the filter);
- ou=groups: staff, students, redes-2026 (sam, sara, tina, ursula), empty-course (nobody but the
  placeholder groupOfNames requires).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.support.processes import Child, free_port
from tests.support.waiting import wait_until

SUFFIX = "dc=uni,dc=test"
SERVICE_DN = f"cn=kubekvm,ou=services,{SUFFIX}"
SERVICE_PASSWORD = "service-secret"
PASSWORDS = {"tina": "tina-pw", "sam": "sam-pw", "sara": "sara-pw", "dora": "dora-pw", "alice": "alice-pw",
             "ursula": "ursula-pw", "nina": "nina-pw", "lena": "lena-pw"}
# The README's OpenLDAP example's (locked accounts left out), and a disabled flag of the site's own.
USER_FILTER = "(&(objectClass=inetOrgPerson)(uid={username})(!(pwdAccountLockedTime=*))(!(employeeType=disabled)))"

_CONFIG = """\
dn: cn=config
objectClass: olcGlobal
cn: config
olcPidFile: {root}/slapd.pid
olcTLSCACertificateFile: {root}/ca.pem
olcTLSCertificateFile: {root}/server.pem
olcTLSCertificateKeyFile: {root}/server.key

dn: cn=module{{0}},cn=config
objectClass: olcModuleList
cn: module{{0}}
olcModulePath: /usr/lib/ldap
olcModuleLoad: back_mdb
olcModuleLoad: ppolicy

dn: cn=schema,cn=config
objectClass: olcSchemaConfig
cn: schema

include: file:///etc/ldap/schema/core.ldif
include: file:///etc/ldap/schema/cosine.ldif
include: file:///etc/ldap/schema/inetorgperson.ldif
include: file:///etc/ldap/schema/nis.ldif

dn: olcDatabase={{-1}}frontend,cn=config
objectClass: olcDatabaseConfig
objectClass: olcFrontendConfig
olcDatabase: {{-1}}frontend

dn: olcDatabase={{0}}config,cn=config
objectClass: olcDatabaseConfig
olcDatabase: {{0}}config
olcAccess: {{0}}to * by * none

dn: olcDatabase={{1}}mdb,cn=config
objectClass: olcDatabaseConfig
objectClass: olcMdbConfig
olcDatabase: {{1}}mdb
olcSuffix: {suffix}
olcDbDirectory: {root}/data
olcRootDN: cn=admin,{suffix}
olcRootPW: admin-secret
olcDbIndex: objectClass eq
olcDbIndex: uid,cn,member eq
olcAccess: {{0}}to attrs=userPassword by anonymous auth by * none
olcAccess: {{1}}to * by dn.exact="{service}" read by self read by * none
"""


def _person(uid: str, *, extra: str = "") -> str:
    return (f"dn: uid={uid},ou=people,{SUFFIX}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {uid.title()}\n"
            f"sn: {uid.title()}\nuserPassword: {PASSWORDS[uid]}\n{extra}\n")


def _group(cn: str, members: list[str]) -> str:
    lines = [f"dn: cn={cn},ou=groups,{SUFFIX}", "objectClass: groupOfNames", f"cn: {cn}"]
    lines += [f"member: uid={m},ou=people,{SUFFIX}" for m in members] or [f"member: {SERVICE_DN}"]
    return "\n".join(lines) + "\n\n"


def _data() -> str:
    units = "".join(f"dn: ou={ou},{SUFFIX}\nobjectClass: organizationalUnit\nou: {ou}\n\n"
                    for ou in ("people", "groups", "services"))
    return (f"dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\ndc: uni\no: Test University\n\n"
            + units
            + f"dn: {SERVICE_DN}\nobjectClass: applicationProcess\nobjectClass: simpleSecurityObject\ncn: kubekvm\n"
              f"userPassword: {SERVICE_PASSWORD}\n\n"
            + "".join(_person(uid) for uid in ("tina", "sam", "sara", "dora", "alice", "nina"))
            + _person("ursula", extra="employeeType: disabled\n")
            + _person("lena", extra="pwdAccountLockedTime: 000001010000Z\n")
            + _group("staff", ["tina"]) + _group("students", ["sam", "sara", "dora", "lena"])
            + _group("redes-2026", ["sam", "sara", "tina", "ursula"]) + _group("empty-course", []))


def _certificates(root: Path) -> None:
    """A test CA (ca.pem) and the server's certificate for 127.0.0.1 signed by it, so StartTLS
    and ldaps can be checked against a CA the client is given (and fail against any other)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "KubeKVM test directory CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))

    server = (x509.CertificateBuilder()
              .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
              .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
              .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                             critical=False)
              .sign(ca_key, hashes.SHA256()))
    (root / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (root / "server.pem").write_bytes(server.public_bytes(serialization.Encoding.PEM))
    (root / "server.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                        serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption()))


@dataclass
class Slapd:
    url: str  # ldap:// (StartTLS offered)
    ldaps_url: str
    root: Path
    process: subprocess.Popen[bytes]

    @property
    def ca_file(self) -> Path:
        return self.root / "ca.pem"

    def settings(self, **overrides: str) -> dict[str, str]:
        """The KUBEKVM_LDAP_* environment of a server using this directory."""
        return {"KUBEKVM_LDAP_URL": self.url, "KUBEKVM_LDAP_BIND_DN": SERVICE_DN,
                "KUBEKVM_LDAP_BIND_PASSWORD": SERVICE_PASSWORD, "KUBEKVM_LDAP_USER_BASE": f"ou=people,{SUFFIX}",
                "KUBEKVM_LDAP_GROUP_BASE": f"ou=groups,{SUFFIX}", "KUBEKVM_LDAP_USER_FILTER": USER_FILTER,
                "KUBEKVM_LDAP_ROLES": "staff=teacher;students=student", "KUBEKVM_LDAP_ADMINS": "alice",
                "KUBEKVM_LDAP_DEFAULT_ROLE": "none", "KUBEKVM_LDAP_TIMEOUT": "10", **overrides}

    def stop(self) -> None:
        try:
            Child(self.process, self.root / "slapd.log").stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def start_slapd(*, timeout: float = 30.0) -> Slapd:
    root = Path(tempfile.mkdtemp(prefix="kubekvm-slapd-"))
    try:
        (root / "config").mkdir()
        (root / "data").mkdir()
        _certificates(root)
        (root / "config.ldif").write_text(_CONFIG.format(root=root, suffix=SUFFIX, service=SERVICE_DN))
        (root / "data.ldif").write_text(_data())
        for args in (["-n0", "-l", str(root / "config.ldif")], ["-n1", "-l", str(root / "data.ldif")]):
            done = subprocess.run(["/usr/sbin/slapadd", "-F", str(root / "config"), *args],
                                  capture_output=True, text=True, timeout=60)
            if done.returncode != 0:
                raise RuntimeError(f"slapadd {args[0]} failed: {done.stderr}")
        url, ldaps_url = f"ldap://127.0.0.1:{free_port()}", f"ldaps://127.0.0.1:{free_port()}"
        log = (root / "slapd.log").open("wb")
        # -d 0: stay in the foreground (a child of this test, stopped by it), logging nothing.
        process = subprocess.Popen(["/usr/sbin/slapd", "-d", "0", "-h", f"{url} {ldaps_url}", "-F", str(root / "config")],
                                   stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    slapd = Slapd(url=url, ldaps_url=ldaps_url, root=root, process=process)
    try:
        _wait_until_bindable(slapd, timeout=timeout)
    except BaseException:
        slapd.stop()
        raise
    return slapd


def _wait_until_bindable(slapd: Slapd, *, timeout: float) -> None:
    """Ready: the service account binds (slapd listens only once its database is open)."""
    from ldap3 import Connection, Server

    def bound() -> bool:
        if slapd.process.poll() is not None:
            raise RuntimeError(f"slapd exited with {slapd.process.returncode}: "
                               f"{(slapd.root / 'slapd.log').read_text(errors='replace')[-2000:]}")
        try:
            connection = Connection(Server(slapd.url, connect_timeout=2), user=SERVICE_DN,
                                    password=SERVICE_PASSWORD, receive_timeout=5)
            if not connection.bind():
                return False
            connection.unbind()
            return True
        except Exception:  # not listening yet
            return False

    wait_until(bound, timeout=timeout, what="slapd accepting the service account's bind", interval=0.05)
