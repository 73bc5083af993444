"""Secrets come from the platform in Kubernetes: a pod with one missing refuses to start, never generates it.

Unit tests of the one rule (services.runtime.config) and of each secret's loader, then real
``awareness serve`` processes that must exit with one line naming the missing variable.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from services.gateway.config import GOPHISH_SECRET_FILE, load_gateway_config
from services.gdpr.keysource import DEV_KEK_FILE, load_key_material
from services.ingest.app import load_ingest_settings
from services.ingest.bootstrap import DEV_FINGERPRINT_FILE
from services.runtime.config import (
    MissingSecretError,
    in_kubernetes,
    load_secret,
    load_settings,
    with_internal_secret,
)
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


def test_in_kubernetes_the_internal_secret_is_never_generated_nor_read_from_the_data_dir(
    tmp_path: Path,
) -> None:
    # A file a pod left in its scratch directory is not a shared secret.
    (tmp_path / "internal-secret").write_text(SECRET)
    settings = load_settings("ingest", {**KUBERNETES, "AWARENESS_DATA_DIR": str(tmp_path)})
    assert settings.internal_secret == b""
    with pytest.raises(MissingSecretError, match="AWARENESS_INTERNAL_SECRET"):
        with_internal_secret(settings)
    outside = with_internal_secret(load_settings("ingest", {"AWARENESS_DATA_DIR": str(tmp_path)}))
    assert outside.internal_secret == SECRET.encode()


def test_the_fingerprint_secret_is_its_own_secret_not_derived_from_the_internal_one(tmp_path: Path) -> None:
    env = {"AWARENESS_DATA_DIR": str(tmp_path), "AWARENESS_INTERNAL_SECRET": SECRET}
    ingest = load_ingest_settings(load_settings("ingest", env))
    assert ingest.fingerprint_secret == (tmp_path / DEV_FINGERPRINT_FILE).read_bytes().strip()
    with pytest.raises(MissingSecretError, match="AWARENESS_INGEST_FINGERPRINT_SECRET"):
        load_ingest_settings(load_settings("ingest", {**env, **KUBERNETES}))


def test_in_kubernetes_the_gateway_refuses_to_run_without_the_gophish_secret(tmp_path: Path) -> None:
    (tmp_path / GOPHISH_SECRET_FILE).write_text(SECRET)
    env = {**KUBERNETES, "AWARENESS_DATA_DIR": str(tmp_path), "AWARENESS_INTERNAL_SECRET": SECRET}
    with pytest.raises(MissingSecretError, match="AWARENESS_GOPHISH_SECRET"):
        load_gateway_config(load_settings("gateway", env))
    configured = load_gateway_config(load_settings("gateway", {**env, "AWARENESS_GOPHISH_SECRET": "g" * 32}))
    assert configured.gophish_secret == b"g" * 32


def test_in_kubernetes_gdpr_refuses_to_generate_a_kek(tmp_path: Path) -> None:
    with pytest.raises(MissingSecretError, match="AWARENESS_KEK_FILE"):
        load_key_material(env=KUBERNETES, data_dir=tmp_path)
    assert not (tmp_path / DEV_KEK_FILE).exists()


def _serve(service: str, tmp_path: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    env = outside_environment()
    env.update(
        KUBERNETES, AWARENESS_DATA_DIR=str(tmp_path), AWARENESS_GRPC_PORT="0", AWARENESS_METRICS_PORT="0"
    )
    env.update(extra)
    return run_module("services.cli", "serve", service, env=env)


@pytest.mark.parametrize(
    ("service", "extra", "named"),
    [
        ("policy", {}, "AWARENESS_INTERNAL_SECRET"),
        ("ingest", {"AWARENESS_INTERNAL_SECRET": SECRET}, "AWARENESS_INGEST_FINGERPRINT_SECRET"),
        ("signing", {"AWARENESS_INTERNAL_SECRET": SECRET}, "AWARENESS_PKI_DIR"),
        (
            "signing",
            {"AWARENESS_INTERNAL_SECRET": SECRET, "AWARENESS_PKI_DIR": "/nonexistent/pki"},
            "AWARENESS_PKI_DIR=/nonexistent/pki",
        ),
        ("gdpr", {"AWARENESS_INTERNAL_SECRET": SECRET}, "AWARENESS_KEK_FILE"),
        ("gateway", {"AWARENESS_INTERNAL_SECRET": SECRET}, "AWARENESS_GOPHISH_SECRET"),
    ],
)
def test_a_pod_missing_a_secret_exits_with_one_line_naming_it(
    tmp_path: Path, service: str, extra: dict[str, str], named: str
) -> None:
    result = _serve(service, tmp_path, **extra)
    assert result.returncode == 78, result.stderr
    lines = [line for line in result.stderr.splitlines() if "refusing to start" in line]
    assert len(lines) == 1 and named in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    # Nothing was generated in the pod's scratch directory.
    assert not any(path.name.endswith("secret") or path.name == "pki" for path in tmp_path.rglob("*"))
