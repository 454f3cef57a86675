"""TLS 1.3 with mutual authentication for migration channels, and a test CA.

Certificates live in one directory laid out like libvirt's and Cloud Hypervisor's:
``ca-cert.pem`` (the CA both sides trust), ``server-cert.pem`` / ``server-key.pem``
(the destination, whose certificate names the address it listens on) and
``client-cert.pem`` / ``client-key.pem`` (the source).  A peer whose certificate
the CA did not sign is refused during the handshake.

``python3 -m xvm.migration.tls DIR [HOST...]`` makes a test CA and both pairs in
``DIR`` (:func:`make_test_ca`; needs the ``cryptography`` package).
"""
import datetime
import ipaddress
import os
import ssl
import sys

from .stream import MigrationError

CA_CERT = "ca-cert.pem"
SERVER_CERT, SERVER_KEY = "server-cert.pem", "server-key.pem"
CLIENT_CERT, CLIENT_KEY = "client-cert.pem", "client-key.pem"
DEFAULT_TLS_DIR = "/etc/pki/xvm"


def tls_dir_of(tls_dir):
    """``tls_dir``, else ``$XVM_TLS_DIR``, else /etc/pki/xvm."""
    return os.path.abspath(tls_dir or os.environ.get("XVM_TLS_DIR") or DEFAULT_TLS_DIR)


def read_material(tls_dir, role):
    """The PEM texts a VMM needs for its end of a migration (``role`` "server" or "client"):
    ``{"ca": ..., "cert": ..., "key": ...}``, read here by the host -- a confined VMM cannot
    read ``tls_dir`` (it sees no /etc, and the key is root's) -- and passed in its action."""
    tls_dir = tls_dir_of(tls_dir)
    cert, key = (SERVER_CERT, SERVER_KEY) if role == "server" else (CLIENT_CERT, CLIENT_KEY)
    paths = [os.path.join(tls_dir, name) for name in (CA_CERT, cert, key)]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise MigrationError(f"TLS directory {tls_dir} lacks {', '.join(os.path.basename(p) for p in missing)} "
                             f"(make a test CA with: python3 -m xvm.migration.tls {tls_dir})", what="tls")
    texts = []
    for path in paths:
        try:
            with open(path) as f:
                texts.append(f.read())
        except (OSError, UnicodeDecodeError) as e:
            raise MigrationError(f"cannot read {path}: {e}", what="tls") from None
    return {"ca": texts[0], "cert": texts[1], "key": texts[2], "dir": tls_dir}


def context_from_material(material, role):
    """The TLS 1.3 context of ``role`` ("server": client certificates required; "client": the
    server's certificate must name the address) from :func:`read_material`'s texts.  The
    certificate and key go through a memfd of this process's own (``load_cert_chain`` takes
    only a path), so this works inside a VMM's jail."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if role == "server" else ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.verify_mode = ssl.CERT_REQUIRED
    where = material.get("dir", "the TLS directory")
    fd = os.memfd_create("xvm-tls", os.MFD_CLOEXEC)
    try:
        os.write(fd, (material["cert"].rstrip("\n") + "\n" + material["key"]).encode())
        context.load_verify_locations(cadata=material["ca"])
        context.load_cert_chain(f"/proc/self/fd/{fd}")
    except (ssl.SSLError, OSError, ValueError, KeyError) as e:
        raise MigrationError(f"cannot load the TLS certificates of {where}: {e}", what="tls") from None
    finally:
        os.close(fd)
    if role == "client":
        context.check_hostname = True
    return context


def server_context(tls_dir=None):
    """The destination's context: its server pair, and client certificates required."""
    return context_from_material(read_material(tls_dir, "server"), "server")


def client_context(tls_dir=None):
    """The source's context: its client pair; the server's certificate must name the address."""
    return context_from_material(read_material(tls_dir, "client"), "client")


def make_test_ca(directory, hosts=("localhost", "127.0.0.1", "::1"), *, days=30):
    """Write a fresh CA and a server and a client pair signed by it into ``directory``
    (made if missing; keys mode 0600).  The server certificate names ``hosts`` (DNS
    names or IP addresses).  For tests and trials: a real deployment has a real CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    os.makedirs(directory, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "xvm test"),
                          x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def build(subject, key, issuer, issuer_key, *, ca=False, usage=None, sans=()):
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=days))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if ca:
            builder = builder.add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                encipher_only=False, decipher_only=False), critical=True)
        if usage is not None:
            builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    def write(filename, data, mode=0o644):
        path = os.path.join(directory, filename)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)

    def pem_key(key):
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    sans = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = name("xvm test CA")
    ca = build(ca_name, ca_key, ca_name, ca_key, ca=True)
    write(CA_CERT, ca.public_bytes(serialization.Encoding.PEM))
    for cert_file, key_file, cn, usage, names in (
            (SERVER_CERT, SERVER_KEY, "xvm migration destination", ExtendedKeyUsageOID.SERVER_AUTH, sans),
            (CLIENT_CERT, CLIENT_KEY, "xvm migration source", ExtendedKeyUsageOID.CLIENT_AUTH, ())):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = build(name(cn), key, ca_name, ca_key, usage=usage, sans=names)
        write(cert_file, cert.public_bytes(serialization.Encoding.PEM))
        write(key_file, pem_key(key), 0o600)
    return directory


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python3 -m xvm.migration.tls DIR [HOST...]\n"
              "  writes a test CA, a server pair (naming HOST..., default localhost 127.0.0.1 ::1)\n"
              "  and a client pair into DIR, as xvm migration expects them", file=sys.stderr)
        return 2
    hosts = tuple(argv[1:]) or ("localhost", "127.0.0.1", "::1")
    make_test_ca(argv[0], hosts)
    print(f"wrote {CA_CERT}, {SERVER_CERT}, {SERVER_KEY}, {CLIENT_CERT}, {CLIENT_KEY} in {argv[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
