"""The portal's settings in the chart (docs/portal.md, docs/helm.md "Portal"): session timeouts and
Secure cookies in the ConfigMap, and OpenID Connect sign-in with its client secret mounted from the
user's Secret into the gateway pods only, and gateway egress on 443 to the provider only when it is on."""

from __future__ import annotations

from typing import Any

import helm_python
import kubernetes_validate
import pytest
import yaml

from tests.helm.rendering import (
    CHART_DIR,
    KUBERNETES_VERSION,
    REPO_ROOT,
    Manifest,
    PodTemplate,
    by_name,
    deep_merge,
    of_kind,
    pod_templates,
    render,
    render_raw,
)

ISSUER = "https://login.example.org/realms/awareness"
CLIENT_ID = "awareness-portal"
CLIENT_SECRET_NAME = "awareness-portal-oidc"
PROVIDER_CIDRS = ["203.0.113.0/24", "198.51.100.7/32"]
SECRET_FILE_VAR = "AWARENESS_PORTAL_OIDC_CLIENT_SECRET_FILE"
OIDC = {
    "portal": {
        "oidc": {
            "issuer": ISSUER,
            "clientId": CLIENT_ID,
            "existingSecret": CLIENT_SECRET_NAME,
            "rolesClaim": "groups",
            "scopes": "openid email",
            "egressCIDRs": PROVIDER_CIDRS,
        }
    }
}
OIDC_VARS = {
    "AWARENESS_PORTAL_OIDC_ISSUER",
    "AWARENESS_PORTAL_OIDC_CLIENT_ID",
    "AWARENESS_PORTAL_OIDC_CLIENT_SECRET",
    SECRET_FILE_VAR,
    "AWARENESS_PORTAL_OIDC_ROLES_CLAIM",
    "AWARENESS_PORTAL_OIDC_SCOPES",
    "AWARENESS_PORTAL_PUBLIC_URL",
}


def _with(**extra: Any) -> dict[str, Any]:
    """The OIDC values with ``extra`` merged in, as a second `-f` file would be."""
    return deep_merge(OIDC, extra)


def _config(manifests: list[Manifest]) -> dict[str, str]:
    config: dict[str, str] = by_name(manifests, "ConfigMap")["awareness-config"]["data"]
    return config


def _pods(manifests: list[Manifest]) -> dict[str, PodTemplate]:
    return {pod.component: pod for pod in pod_templates(manifests)}


def _env(pod: PodTemplate) -> dict[str, dict[str, Any]]:
    (container,) = pod.spec["containers"]
    return {e["name"]: e for e in container.get("env", [])}


def _mounts_of_secret(pod: PodTemplate, secret_name: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(volume mount, secret volume source) for every mount of ``secret_name`` in the pod."""
    volumes = {
        v["name"]: v["secret"]
        for v in pod.spec["volumes"]
        if "secret" in v and v["secret"]["secretName"] == secret_name
    }
    (container,) = pod.spec["containers"]
    return [(m, volumes[m["name"]]) for m in container["volumeMounts"] if m["name"] in volumes]


def _egress_to_cidrs(manifests: list[Manifest], component: str) -> set[tuple[str, int]]:
    (policy,) = [
        p
        for p in of_kind(manifests, "NetworkPolicy")
        if p["spec"]["podSelector"]["matchLabels"].get("app.kubernetes.io/component") == component
    ]
    return {
        (peer["ipBlock"]["cidr"], port["port"])
        for rule in policy["spec"].get("egress") or []
        for peer in rule.get("to", [])
        if "ipBlock" in peer
        for port in rule.get("ports", [])
    }


@pytest.fixture(scope="module")
def oidc_manifests() -> list[Manifest]:
    return render(OIDC)


# Defaults ----------------------------------------------------------------------------------------


def test_defaults_give_secure_cookies_and_no_oidc(manifests: list[Manifest]) -> None:
    config = _config(manifests)
    assert config["AWARENESS_PORTAL_SECURE_COOKIES"] == "true"
    assert config["AWARENESS_PORTAL_SESSION_IDLE_SECONDS"] == "1800"
    assert config["AWARENESS_PORTAL_SESSION_MAX_SECONDS"] == "43200"
    assert not OIDC_VARS & set(config)
    for component, pod in _pods(manifests).items():
        assert not OIDC_VARS & set(_env(pod)), component
        assert "portal-oidc" not in {v["name"] for v in pod.spec["volumes"]}, component
    # No gateway egress on 443 at all: neither JWKS nor an OpenID provider is configured.
    assert 443 not in {port for _, port in _egress_to_cidrs(manifests, "gateway")}


def test_session_settings_and_cookies_follow_values() -> None:
    config = _config(
        render({"portal": {"sessionIdleSeconds": 600, "sessionMaxSeconds": 28800, "secureCookies": False}})
    )
    assert config["AWARENESS_PORTAL_SESSION_IDLE_SECONDS"] == "600"
    assert config["AWARENESS_PORTAL_SESSION_MAX_SECONDS"] == "28800"
    assert config["AWARENESS_PORTAL_SECURE_COOKIES"] == "false"


# OpenID Connect ----------------------------------------------------------------------------------


def test_oidc_settings_land_in_the_configmap_without_the_secret(oidc_manifests: list[Manifest]) -> None:
    config = _config(oidc_manifests)
    assert config["AWARENESS_PORTAL_OIDC_ISSUER"] == ISSUER
    assert config["AWARENESS_PORTAL_OIDC_CLIENT_ID"] == CLIENT_ID
    assert config["AWARENESS_PORTAL_OIDC_ROLES_CLAIM"] == "groups"
    assert config["AWARENESS_PORTAL_OIDC_SCOPES"] == "openid email"
    # The secret is a file from the user's Secret: neither its value nor its path is a shared setting.
    assert "AWARENESS_PORTAL_OIDC_CLIENT_SECRET" not in config
    assert SECRET_FILE_VAR not in config
    # Ingress is off by default, so there is no public URL to derive: the portal uses the request's.
    assert "AWARENESS_PORTAL_PUBLIC_URL" not in config
    # Unset optional keys stay unset, so the service's own defaults apply.
    bare = _config(render(_with(portal={"oidc": {"rolesClaim": ""}})))
    assert "AWARENESS_PORTAL_OIDC_ROLES_CLAIM" not in bare
    assert bare["AWARENESS_PORTAL_OIDC_SCOPES"] == "openid email"


def test_the_client_secret_is_mounted_read_only_into_the_gateway_only(
    oidc_manifests: list[Manifest],
) -> None:
    pods = _pods(oidc_manifests)
    gateway = pods["gateway"]
    ((mount, source),) = _mounts_of_secret(gateway, CLIENT_SECRET_NAME)
    assert mount["readOnly"] is True
    assert "subPath" not in mount
    assert source["items"] == [{"key": "client-secret", "path": "client-secret"}]
    assert source["defaultMode"] == 0o440
    # The gateway reads it through _FILE, pointing at the mounted file.
    file_env = _env(gateway)[SECRET_FILE_VAR]
    assert file_env == {"name": SECRET_FILE_VAR, "value": f"{mount['mountPath']}/client-secret"}
    assert "AWARENESS_PORTAL_OIDC_CLIENT_SECRET" not in _env(gateway)
    for component, pod in pods.items():
        if component != "gateway":
            assert _mounts_of_secret(pod, CLIENT_SECRET_NAME) == [], component
            assert CLIENT_SECRET_NAME not in yaml.safe_dump(pod.spec), component
            assert SECRET_FILE_VAR not in _env(pod), component
    # The Secret is the user's: the chart neither creates it nor names it anywhere but the gateway.
    assert CLIENT_SECRET_NAME not in by_name(oidc_manifests, "Secret")
    for manifest in oidc_manifests:
        if manifest["kind"] != "Deployment":
            assert CLIENT_SECRET_NAME not in yaml.safe_dump(manifest), manifest["kind"]


def test_the_secret_key_inside_the_existing_secret_is_configurable() -> None:
    values = _with(portal={"oidc": {"secretKey": "oidc-client-secret"}})
    gateway = _pods(render(values))["gateway"]
    ((_, source),) = _mounts_of_secret(gateway, CLIENT_SECRET_NAME)
    assert source["items"] == [{"key": "oidc-client-secret", "path": "client-secret"}]


def test_the_gateway_may_reach_the_provider_on_443_and_nothing_else_changes(
    oidc_manifests: list[Manifest],
) -> None:
    default = render()
    gateway = _egress_to_cidrs(oidc_manifests, "gateway")
    assert {(cidr, 443) for cidr in PROVIDER_CIDRS} <= gateway
    assert gateway - _egress_to_cidrs(default, "gateway") == {(cidr, 443) for cidr in PROVIDER_CIDRS}
    for component in _pods(oidc_manifests):
        if component != "gateway":
            assert _egress_to_cidrs(oidc_manifests, component) == _egress_to_cidrs(default, component)
    # By default it is the internet on 443, as for gatewayAuth.jwksEgressCIDRs.
    oidc = {key: value for key, value in OIDC["portal"]["oidc"].items() if key != "egressCIDRs"}
    defaults = _egress_to_cidrs(render({"portal": {"oidc": oidc}}), "gateway")
    assert defaults - _egress_to_cidrs(default, "gateway") == {("0.0.0.0/0", 443)}


@pytest.mark.parametrize(
    ("ingress", "public_url", "expected"),
    [
        ({"enabled": True}, "", "https://awareness.example.com"),
        (
            {"enabled": True, "hosts": ["*.example.org", "portal.example.org"]},
            "",
            "https://portal.example.org",
        ),
        ({"enabled": True, "tls": {"enabled": False}}, "", None),
        ({"enabled": False}, "", None),
        ({"enabled": True}, "https://awareness.example.org/", "https://awareness.example.org"),
        ({"enabled": False}, "https://awareness.example.org:8443", "https://awareness.example.org:8443"),
    ],
    ids=["ingress-tls", "skips-wildcard", "ingress-without-tls", "no-ingress", "explicit", "explicit-port"],
)
def test_the_public_url_is_explicit_or_derived_from_the_ingress(
    ingress: dict[str, Any], public_url: str, expected: str | None
) -> None:
    values = _with(ingress=ingress, portal={"publicUrl": public_url})
    manifests = render(values)
    assert _config(manifests).get("AWARENESS_PORTAL_PUBLIC_URL") == expected
    notes = next(text for path, text in render_raw(values).items() if path.endswith("NOTES.txt"))
    if expected:
        assert f"{expected}/portal/oidc/callback" in notes
    else:
        assert "<the portal's public https URL>/portal/oidc/callback" in notes


def test_the_public_url_is_only_set_for_oidc() -> None:
    config = _config(render({"ingress": {"enabled": True}, "portal": {"publicUrl": "https://a.example.org"}}))
    assert "AWARENESS_PORTAL_PUBLIC_URL" not in config


def test_an_oidc_render_lints_and_validates_against_kubernetes_1_30(oidc_manifests: list[Manifest]) -> None:
    report = helm_python.lint(CHART_DIR, OIDC, strict=True, kube_version=f"v{KUBERNETES_VERSION}")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []
    for manifest in oidc_manifests:
        # Custom resources have no bundled schema (tests/helm/test_chart.py).
        if not manifest["apiVersion"].startswith(("cert-manager.io/", "monitoring.coreos.com/")):
            kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize(
    ("oidc", "missing"),
    [
        ({"issuer": ISSUER, "clientId": CLIENT_ID}, ["portal.oidc.existingSecret"]),
        ({"issuer": ISSUER, "existingSecret": CLIENT_SECRET_NAME}, ["portal.oidc.clientId"]),
        ({"issuer": ISSUER}, ["portal.oidc.clientId", "portal.oidc.existingSecret"]),
    ],
    ids=["no-existing-secret", "no-client-id", "neither"],
)
def test_an_issuer_without_its_client_fails_to_render(oidc: dict[str, str], missing: list[str]) -> None:
    with pytest.raises(helm_python.HelmRenderError) as caught:
        render_raw({"portal": {"oidc": oidc}})
    message = str(caught.value)
    assert "portal.oidc.issuer is set" in message
    named = message.rsplit("missing: ", 1)[1].split()
    assert [key.rstrip(",") for key in named[: len(missing)]] == missing
    assert not ({"portal.oidc.clientId", "portal.oidc.existingSecret"} - set(missing)) & set(named)
    # Without an issuer the client settings are inert: nothing fails, nothing is mounted.
    manifests = render({"portal": {"oidc": {k: v for k, v in oidc.items() if k != "issuer"}}})
    assert "AWARENESS_PORTAL_OIDC_CLIENT_ID" not in _config(manifests)


# Schema ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"portal": {"sessionTimeout": 60}}, "sessionTimeout"),
        ({"portal": {"oidc": {"clientSecret": "s3cret"}}}, "clientSecret"),
        ({"portal": {"oidc": {"issuer": "http://login.example.org"}}}, "issuer"),
        ({"portal": {"oidc": {"issuer": "https://login.example.org?x=1"}}}, "issuer"),
        ({"portal": {"publicUrl": "awareness.example.org"}}, "publicUrl"),
        ({"portal": {"sessionIdleSeconds": 0}}, "sessionIdleSeconds"),
        ({"portal": {"sessionMaxSeconds": "12h"}}, "sessionMaxSeconds"),
        ({"portal": {"secureCookies": "yes"}}, "secureCookies"),
        ({"portal": {"oidc": {"egressCIDRs": ["login.example.org"]}}}, "egressCIDRs"),
        ({"portal": {"oidc": {"secretKey": ""}}}, "secretKey"),
    ],
    ids=[
        "unknown-portal-key",
        "unknown-oidc-key",
        "issuer-not-https",
        "issuer-with-query",
        "public-url-not-a-url",
        "idle-below-minimum",
        "max-not-integer",
        "secure-cookies-not-boolean",
        "cidr-not-a-cidr",
        "empty-secret-key",
    ],
)
def test_the_schema_checks_the_portal_block(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm_python.HelmValuesError) as caught:
        render_raw(values)
    assert message in str(caught.value)


def test_the_schema_is_strict_in_the_portal_block() -> None:
    with helm_python.Chart.load(CHART_DIR) as chart:
        schema = chart.schema
        values = chart.values
    assert schema is not None
    portal = schema["properties"]["portal"]
    assert portal["additionalProperties"] is False
    assert portal["properties"]["oidc"]["additionalProperties"] is False
    # Every default is described by the schema, and the defaults validate (empty URLs allowed).
    assert set(values["portal"]) == set(portal["properties"])
    assert set(values["portal"]["oidc"]) == set(portal["properties"]["oidc"]["properties"])
    assert values["portal"]["secureCookies"] is True


# Docs --------------------------------------------------------------------------------------------


def test_the_docs_describe_every_portal_value_and_the_callback() -> None:
    docs = (REPO_ROOT / "docs" / "helm.md").read_text()
    section = docs.split("\n## Portal\n", 1)[1].split("\n## ", 1)[0]
    with helm_python.Chart.load(CHART_DIR) as chart:
        portal = chart.values["portal"]
    keys = [f"portal.{key}" for key in portal if key != "oidc"]
    keys += [f"portal.oidc.{key}" for key in portal["oidc"]]
    assert [key for key in keys if f"`{key}`" not in section] == []
    assert "/portal/oidc/callback" in section
