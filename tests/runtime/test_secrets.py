"""Secrets come from the platform in Kubernetes: a pod with one missing refuses to start, never generates it.

Unit tests of the one rule (services.runtime.config), of each process's identity (its mTLS certificate
and its service secret, ``with_identity``) and of each secret's loader, then real ``awareness serve``
processes that must exit with one line naming the missing variable.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from services.gateway.config import GOPHISH_SECRET_FILE, load_gateway_config
from services.gdpr.keysource import DEV_KEK_FILE, load_key_material
from services.ingest.app import load_ingest_settings
from services.ingest.bootstrap import DEV_FINGERPRINT_FILE
from services.runtime.config import (
    ENVIRONMENT_VAR,
    MTLS_FILE_VARS,
    SERVICE_SECRET_VAR,
    ConfigError,
    MissingSecretError,
    in_kubernetes,
    load_secret,
    load_settings,
    with_identity,
)
from services.runtime.identity import MtlsFiles
from tests.support.servers import identity_of
from tests.support.suite import outside_environment, run_module

KUBERNETES = {"KUBERNETES_SERVICE_HOST": "10.96.0.1"}
SECRET = "s" * 32


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, False),
        ({"KUBERNETES_SERVICE_HOST": "10.96.0.1"}, True),
        ({"AWARENESS_ENVIRONMENT": "kubernetes"}, True),
        ({"AWARENESS_ENVIRONMENT": "Production"}, True),
        ({"AWARENESS_ENVIRONMENT": "development"}, False),
    ],
)
def test_kubernetes_is_detected_from_the_kubelet_variable_or_the_chart_setting(
    env: dict[str, str], expected: bool
) -> None:
    assert in_kubernetes(env) is expected


def test_outside_kubernetes_a_missing_secret_is_generated_once_under_the_data_dir(tmp_path: Path) -> None:
    first = load_secret({}, "AWARENESS_EXAMPLE_SECRET", dev_file=tmp_path / "example")
    assert load_secret({}, "AWARENESS_EXAMPLE_SECRET", dev_file=tmp_path / "example") == first
    assert (tmp_path / "example").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("env", [KUBERNETES, {"AWARENESS_ENVIRONMENT": "kubernetes"}])
def test_in_kubernetes_a_missing_secret_is_an_error_naming_the_variable(
    tmp_path: Path, env: dict[str, str]
) -> None:
    with pytest.raises(MissingSecretError, match="AWARENESS_EXAMPLE_SECRET"):
        load_secret(env, "AWARENESS_EXAMPLE_SECRET", dev_file=tmp_path / "example")
    assert not (tmp_path / "example").exists()


def test_in_kubernetes_a_mounted_secret_file_is_used(tmp_path: Path) -> None:
    (tmp_path / "mounted").write_text(SECRET + "\n")
    env = {**KUBERNETES, "AWARENESS_EXAMPLE_SECRET_FILE": str(tmp_path / "mounted")}
    assert load_secret(env, "AWARENESS_EXAMPLE_SECRET", dev_file=tmp_path / "dev") == SECRET.encode()


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(directory)): path.read_bytes() for path in directory.rglob("*") if path.is_file()
    }


def _san(certificate: x509.Certificate) -> x509.SubjectAlternativeName:
    return certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


@pytest.mark.parametrize("kubernetes", [KUBERNETES, {ENVIRONMENT_VAR: "kubernetes"}])
def test_in_kubernetes_neither_the_certificate_nor_the_service_secret_is_generated_nor_read_from_the_data_dir(
    tmp_path: Path, kubernetes: dict[str, str]
) -> None:
    env = {**kubernetes, "AWARENESS_DATA_DIR": str(tmp_path)}
    # An empty scratch directory: nothing is generated in it.
    with pytest.raises(MissingSecretError) as missing:
        with_identity(load_settings("ingest", env))
    assert all(name in str(missing.value) for name in MTLS_FILE_VARS), missing.value
    assert _snapshot(tmp_path) == {}
    # A certificate and a secret a pod (or `awareness up`) left in its scratch directory are not read.
    outside = with_identity(load_settings("ingest", {"AWARENESS_DATA_DIR": str(tmp_path)}))
    assert outside.identity.exist() and outside.identity.cert_file.is_relative_to(tmp_path)
    assert outside.service_secret
    left_behind = _snapshot(tmp_path)
    settings = load_settings("ingest", env)
    assert settings.mtls is None
    assert settings.service_secret == b""
    with pytest.raises(MissingSecretError) as missing:
        with_identity(settings)
    assert all(name in str(missing.value) for name in MTLS_FILE_VARS), missing.value
    # With the certificate mounted, the service secret must be mounted too.
    issued = identity_of("ingest")
    mounted = {
        **env,
        "AWARENESS_MTLS_CERT_FILE": str(issued.cert_file),
        "AWARENESS_MTLS_KEY_FILE": str(issued.key_file),
        "AWARENESS_MTLS_CA_FILE": str(issued.ca_file),
    }
    with pytest.raises(MissingSecretError, match=SERVICE_SECRET_VAR):
        with_identity(load_settings("ingest", mounted))
    configured = with_identity(load_settings("ingest", {**mounted, SERVICE_SECRET_VAR: SECRET}))
    assert configured.identity == issued
    assert configured.service_secret == SECRET.encode() != outside.service_secret
    assert _snapshot(tmp_path) == left_behind


def test_outside_kubernetes_with_identity_issues_the_development_certificate_and_a_secret_per_service(
    tmp_path: Path,
) -> None:
    env = {"AWARENESS_DATA_DIR": str(tmp_path)}
    ingest = with_identity(load_settings("ingest", env))
    gdpr = with_identity(load_settings("gdpr", env))
    ca = x509.load_pem_x509_certificate((tmp_path / "mtls" / "ca.crt").read_bytes())
    for settings in (ingest, gdpr):
        files = settings.identity
        assert files == MtlsFiles.in_directory(tmp_path / "mtls", settings.service)
        assert files.key_file.stat().st_mode & 0o777 == 0o600
        certificate = x509.load_pem_x509_certificate(files.cert_file.read_bytes())
        certificate.verify_directly_issued_by(ca)
        san = _san(certificate)
        assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
            f"spiffe://awareness.internal/service/{settings.service}"
        ]
        assert f"{settings.service}.awareness.internal" in san.get_values_for_type(x509.DNSName)
        usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert {ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH} <= set(usages)
    # One secret per service, known to no other service, the same for every replica of it.
    assert len(ingest.service_secret) >= 16 and len(gdpr.service_secret) >= 16
    assert ingest.service_secret != gdpr.service_secret
    again = with_identity(load_settings("ingest", env))
    assert again.service_secret == ingest.service_secret
    assert again.identity.cert_file.read_bytes() == ingest.identity.cert_file.read_bytes()


@pytest.mark.parametrize(
    "layout",
    [
        "elsewhere",
        "development",
    ],
)
def test_explicit_certificate_files_that_do_not_exist_are_refused_not_generated(
    tmp_path: Path, layout: str
) -> None:
    given = tmp_path / "mounted"
    names = (
        ("tls.crt", "tls.key", "ca.crt") if layout == "elsewhere" else ("ingest.crt", "ingest.key", "ca.crt")
    )
    env = {
        "AWARENESS_DATA_DIR": str(tmp_path / "var"),
        **{name: str(given / file) for name, file in zip(MTLS_FILE_VARS, names, strict=True)},
    }
    with pytest.raises(MissingSecretError) as missing:
        with_identity(load_settings("ingest", env))
    assert all(name in str(missing.value) for name in MTLS_FILE_VARS), missing.value
    assert not given.exists()
    assert not [path for path in tmp_path.rglob("*") if path.suffix in (".crt", ".key")]


def test_a_partial_set_of_certificate_files_is_a_configuration_error(tmp_path: Path) -> None:
    env = {"AWARENESS_DATA_DIR": str(tmp_path), MTLS_FILE_VARS[0]: str(identity_of("ingest").cert_file)}
    with pytest.raises(ConfigError, match="AWARENESS_MTLS_KEY_FILE"):
        load_settings("ingest", env)


def test_the_fingerprint_secret_is_its_own_secret_not_derived_from_the_service_secret(tmp_path: Path) -> None:
    env = {"AWARENESS_DATA_DIR": str(tmp_path), SERVICE_SECRET_VAR: SECRET}
    ingest = load_ingest_settings(load_settings("ingest", env))
    assert ingest.fingerprint_secret == (tmp_path / DEV_FINGERPRINT_FILE).read_bytes().strip()
    assert ingest.fingerprint_secret != SECRET.encode()
    with pytest.raises(MissingSecretError, match="AWARENESS_INGEST_FINGERPRINT_SECRET"):
        load_ingest_settings(load_settings("ingest", {**env, **KUBERNETES}))


def test_in_kubernetes_the_gateway_refuses_to_run_without_the_gophish_secret(tmp_path: Path) -> None:
    (tmp_path / GOPHISH_SECRET_FILE).write_text(SECRET)
    env = {**KUBERNETES, "AWARENESS_DATA_DIR": str(tmp_path), SERVICE_SECRET_VAR: SECRET}
    with pytest.raises(MissingSecretError, match="AWARENESS_GOPHISH_SECRET"):
        load_gateway_config(load_settings("gateway", env))
    configured = load_gateway_config(load_settings("gateway", {**env, "AWARENESS_GOPHISH_SECRET": "g" * 32}))
    assert configured.gophish_secret == b"g" * 32


def test_in_kubernetes_gdpr_refuses_to_generate_a_kek(tmp_path: Path) -> None:
    with pytest.raises(MissingSecretError, match="AWARENESS_KEK_FILE"):
        load_key_material(env=KUBERNETES, data_dir=tmp_path)
    assert not (tmp_path / DEV_KEK_FILE).exists()


def _serve(service: str, tmp_path: Path, *, given: str, **extra: str) -> subprocess.CompletedProcess[str]:
    """``awareness serve`` in a pod: ``given`` says which of its identity the platform mounted."""
    env = outside_environment()
    env.update(
        KUBERNETES, AWARENESS_DATA_DIR=str(tmp_path), AWARENESS_GRPC_PORT="0", AWARENESS_METRICS_PORT="0"
    )
    if given in ("certificate", "identity"):
        issued = identity_of(service)
        files = (issued.cert_file, issued.key_file, issued.ca_file)
        env.update({name: str(path) for name, path in zip(MTLS_FILE_VARS, files, strict=True)})
    if given == "identity":
        env[SERVICE_SECRET_VAR] = SECRET
    env.update(extra)
    return run_module("services.cli", "serve", service, env=env)


@pytest.mark.parametrize(
    ("service", "given", "extra", "named"),
    [
        ("policy", "", {}, "AWARENESS_MTLS_CERT_FILE"),
        ("policy", "certificate", {}, SERVICE_SECRET_VAR),
        ("ingest", "identity", {}, "AWARENESS_INGEST_FINGERPRINT_SECRET"),
        ("signing", "identity", {}, "AWARENESS_PKI_DIR"),
        (
            "signing",
            "identity",
            {"AWARENESS_PKI_DIR": "/nonexistent/pki"},
            "AWARENESS_PKI_DIR=/nonexistent/pki",
        ),
        ("gdpr", "identity", {}, "AWARENESS_KEK_FILE"),
        ("gateway", "", {}, "AWARENESS_MTLS_CERT_FILE"),
        ("gateway", "identity", {}, "AWARENESS_GOPHISH_SECRET"),
    ],
)
def test_a_pod_missing_a_secret_exits_with_one_line_naming_it(
    tmp_path: Path, service: str, given: str, extra: dict[str, str], named: str
) -> None:
    result = _serve(service, tmp_path, given=given, **extra)
    assert result.returncode == 78, result.stderr
    lines = [line for line in result.stderr.splitlines() if "refusing to start" in line]
    assert len(lines) == 1 and named in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    # Nothing was generated in the pod's scratch directory: no secret, PKI or certificate.
    assert not any(
        path.name.endswith("secret")
        or path.name in ("pki", "mtls", "service-secrets")
        or path.suffix in (".crt", ".key")
        for path in tmp_path.rglob("*")
    )
