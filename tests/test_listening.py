"""Where and how the sidecar listens: loopback, IPv6, Unix sockets, TLS, mTLS, bearer tokens."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

import grpc
import pytest
from cosyvoice_sidecar_client import AsyncSynthesizerClient
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sidecar.config import Config, Secret
from sidecar.emulator import Emulator
from tests.conftest import StartSidecar
from tests.processes import Process
from tests.test_server import _health


def test_default_listen_address_is_loopback() -> None:
    """Security by default: nothing outside the host reaches an unconfigured sidecar."""
    assert Config().listen.startswith("127.0.0.1:")


async def test_a_port_in_use_is_refused_not_shared(start_sidecar: StartSidecar) -> None:
    """A second sidecar on a busy port exits 1 saying so; the first keeps every call."""
    first = await start_sidecar()
    async with Process(
        "serve", "--emulator", f"--listen={first.address}", env={"GRPC_VERBOSITY": "NONE"}
    ) as second:
        code, out, err = await second.finish()
    assert code == 1
    assert "serving on" not in out
    assert f"cannot listen on {first.address}: the address is in use" in err
    async with AsyncSynthesizerClient(first.address) as client:
        for _ in range(4):  # with SO_REUSEPORT some of these would go to the second
            assert (await client.synthesize("Still the first.")).completed.audio_bytes > 0
    assert first.servicer.active_calls == 0


async def test_ipv6_loopback(start_sidecar: StartSidecar) -> None:
    """[::1]:0 binds IPv6 and serves."""
    server = await start_sidecar(listen="[::1]:0")
    assert server.address.startswith("[::1]:")
    async with AsyncSynthesizerClient(server.address) as client:
        result = await client.synthesize("Over IPv6.")
    assert result.completed.audio_bytes > 0


async def test_unix_socket(start_sidecar: StartSidecar, tmp_path: Path) -> None:
    """unix:///path serves on a Unix socket (a shared emptyDir between containers)."""
    path = tmp_path / "sidecar.sock"
    server = await start_sidecar(listen=f"unix://{path}")
    assert server.address == f"unix://{path}"
    assert path.exists()
    async with AsyncSynthesizerClient(f"unix://{path}") as client:
        result = await client.synthesize("Over a Unix socket.")
    assert result.completed.audio_bytes > 0


class _Pki:
    """A throwaway CA with a server certificate for 127.0.0.1 and a client certificate."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        self.ca_cert = self._certificate("test-ca", self.ca_key, self.ca_key, None, ca=True)
        self.ca = self._write("ca.pem", self.ca_cert.public_bytes(serialization.Encoding.PEM))
        self.server_cert, self.server_key = self._leaf("server", san_ip="127.0.0.1")
        self.client_cert, self.client_key = self._leaf("client")

    def _certificate(
        self,
        name: str,
        key: ec.EllipticCurvePrivateKey,
        signer: ec.EllipticCurvePrivateKey,
        issuer: x509.Certificate | None,
        *,
        ca: bool = False,
        san_ip: str | None = None,
    ) -> x509.Certificate:
        now = datetime.datetime.now(datetime.UTC)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer.subject if issuer else subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if san_ip:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(san_ip))]),
                critical=False,
            )
        return builder.sign(signer, hashes.SHA256())

    def _leaf(self, name: str, san_ip: str | None = None) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self._certificate(name, key, self.ca_key, self.ca_cert, san_ip=san_ip)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return (
            self._write(f"{name}.pem", cert.public_bytes(serialization.Encoding.PEM)),
            self._write(f"{name}.key", key_pem),
        )

    def _write(self, name: str, data: bytes) -> Path:
        path = self.dir / name
        path.write_bytes(data)
        return path


@pytest.fixture
def pki(tmp_path: Path) -> _Pki:
    return _Pki(tmp_path)


def _tls_channel(pki: _Pki, address: str, *, client_cert: bool) -> grpc.aio.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki.ca.read_bytes(),
        private_key=pki.client_key.read_bytes() if client_cert else None,
        certificate_chain=pki.client_cert.read_bytes() if client_cert else None,
    )
    return grpc.aio.secure_channel(address, credentials)


async def test_tls(start_sidecar: StartSidecar, pki: _Pki) -> None:
    """With a certificate and key the sidecar serves TLS; plaintext callers fail."""
    server = await start_sidecar(tls_cert=str(pki.server_cert), tls_key=str(pki.server_key))
    async with AsyncSynthesizerClient(
        server.address, channel=_tls_channel(pki, server.address, client_cert=False)
    ) as client:
        result = await client.synthesize("Over TLS.")
    assert result.completed.audio_bytes > 0
    async with AsyncSynthesizerClient(server.address) as plaintext:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await plaintext.synthesize("Not over TLS.", timeout=5)
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("broken", ["key of another certificate", "not PEM", "CA not PEM"])
async def test_unusable_tls_files_are_named_not_called_a_busy_port(
    pki: _Pki, tmp_path: Path, broken: str
) -> None:
    """A key that does not match the certificate, or a file that is no PEM: exit 1 naming
    TLS and the files (grpc alone reports it as a failed bind: "address in use")."""
    cert, key, ca = pki.server_cert, pki.server_key, pki.ca
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    if broken == "key of another certificate":
        key = pki.client_key
    elif broken == "not PEM":
        cert = junk
    else:
        ca = junk
    args = [f"--tls-cert={cert}", f"--tls-key={key}", f"--tls-client-ca={ca}"]
    async with Process("serve", "--emulator", "--listen=127.0.0.1:0", *args) as sidecar:
        code, out, err = await sidecar.finish()
    assert code == 1
    assert "serving on" not in out
    assert "TLS: " in err
    assert "in use" not in err
    assert str(ca if broken == "CA not PEM" else cert) in err


async def test_mtls_requires_a_client_certificate(start_sidecar: StartSidecar, pki: _Pki) -> None:
    """With a client CA, only callers presenting a certificate it signed get through."""
    server = await start_sidecar(
        tls_cert=str(pki.server_cert), tls_key=str(pki.server_key), tls_client_ca=str(pki.ca)
    )
    async with AsyncSynthesizerClient(
        server.address, channel=_tls_channel(pki, server.address, client_cert=True)
    ) as client:
        result = await client.synthesize("Mutual TLS.")
    assert result.completed.audio_bytes > 0
    async with AsyncSynthesizerClient(
        server.address, channel=_tls_channel(pki, server.address, client_cert=False)
    ) as anonymous:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await anonymous.synthesize("No certificate.", timeout=5)
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize(
    ("metadata", "allowed"),
    [
        ((("authorization", "Bearer s3cret-token"),), True),
        ((("authorization", "bearer s3cret-token"),), True),
        ((("authorization", "Bearer wrong-token"),), False),
        ((("authorization", "s3cret-token"),), False),
        ((), False),
    ],
)
async def test_bearer_token(
    start_sidecar: StartSidecar,
    emulator: Emulator,
    metadata: tuple[tuple[str, str], ...],
    allowed: bool,
) -> None:
    """A wrong or missing token is UNAUTHENTICATED and never reaches the pool; health is open."""
    server = await start_sidecar(auth_token=Secret("s3cret-token"))
    async with AsyncSynthesizerClient(server.address) as client:
        if allowed:
            result = await client.synthesize("Token?", metadata=metadata)
            assert result.completed.audio_bytes > 0
        else:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await client.synthesize("Token?", metadata=metadata)
            assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
            assert emulator.stats.tasks_started == 0
            assert server.pool.status().busy == 0
    assert await _health(server.address) == 1  # SERVING, without a token
