"""KEK rotation in Kubernetes, as the ``kek-rotation`` CronJob runs it (``gdpr rotate-kek --kubernetes``).

The gdpr pods read the keyring from a read-only Secret, so the job rotates it there:

1. Read the keyring from the gdpr keys Secret. If it holds one KEK, add a new KEK as active beside it and
   write the Secret back (optimistic concurrency: a concurrent writer makes the job fail, not overwrite).
2. Restart the gdpr Deployment and wait for the rollout: every gdpr pod now wraps new data keys under the
   new KEK and re-wraps the old ones at start-up.
3. Re-wrap here whatever is still under an old KEK (each row is compare-and-swapped, so this is safe beside
   the pods doing the same).
4. Delete from the Secret each old KEK that wraps no data key any more, and restart gdpr again so that no
   pod keeps it in memory. A data key shredded before the rotation, surviving only in an old backup, was
   wrapped under a KEK that no longer exists anywhere: the backup cannot bring it back.

Every step can be repeated: a run that died midway is finished by the next one (a keyring that already
holds several KEKs is not rotated again, only completed).
"""

from __future__ import annotations

import base64
import json
import logging
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from services.gdpr.domain.keys import Keyring
from services.gdpr.keysource import KeyMaterial, parse_keyring
from services.gdpr.service.transactions import GdprStore

log = logging.getLogger("awareness.gdpr.kek_rotation")

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
ROTATION_ANNOTATION = "awareness.io/kek-rotation"
ACTOR = "job:kek-rotation"


class RotationError(RuntimeError):
    """The rotation stopped; the Secret and the data keys are consistent, and the next run resumes."""


class KubernetesApi:
    """The few calls the job needs, over the API server's REST interface with the pod's token."""

    def __init__(
        self, *, base_url: str, namespace: str, token: str, ca_file: Path | None, timeout: float = 10.0
    ) -> None:
        self._base = base_url.rstrip("/")
        self.namespace = namespace
        self._token = token
        self._timeout = timeout
        self._context = ssl.create_default_context(cafile=str(ca_file)) if ca_file else None

    @classmethod
    def in_cluster(cls, env: Mapping[str, str]) -> KubernetesApi:
        host = env.get("KUBERNETES_SERVICE_HOST", "").strip()
        port = env.get("KUBERNETES_SERVICE_PORT", "443").strip()
        if not host:
            raise RotationError("not in a Kubernetes pod: KUBERNETES_SERVICE_HOST is not set")
        try:
            token = (SERVICE_ACCOUNT_DIR / "token").read_text().strip()
            namespace = (SERVICE_ACCOUNT_DIR / "namespace").read_text().strip()
        except OSError as exc:
            raise RotationError(f"no service-account token mounted: {exc}") from exc
        return cls(
            base_url=f"https://{host}:{port}",
            namespace=namespace,
            token=token,
            ca_file=SERVICE_ACCOUNT_DIR / "ca.crt",
        )

    def _request(
        self, method: str, path: str, body: Any = None, *, content_type: str = "application/json"
    ) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(  # noqa: S310 - the API server's URL, built above
            f"{self._base}{path}",
            data=data,
            method=method,
            headers={
                "Authorization": f"Bearer {self._token}",
                "Accept": "application/json",
                "Content-Type": content_type,
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=self._timeout, context=self._context) as response:  # noqa: S310
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            raise RotationError(f"{method} {path}: HTTP {exc.code} {exc.reason}") from exc
        except OSError as exc:
            raise RotationError(f"{method} {path}: {exc}") from exc

    def _path(self, group: str, kind: str, name: str) -> str:
        return f"{group}/namespaces/{self.namespace}/{kind}/{name}"

    def get_secret(self, name: str) -> dict[str, Any]:
        secret: dict[str, Any] = self._request("GET", self._path("/api/v1", "secrets", name))
        return secret

    def replace_secret(self, secret: Mapping[str, Any]) -> None:
        """PUT with the resourceVersion that was read: fails (409) if someone changed it meanwhile."""
        self._request("PUT", self._path("/api/v1", "secrets", secret["metadata"]["name"]), dict(secret))

    def restart_deployment(self, name: str, stamp: str) -> None:
        """What ``kubectl rollout restart`` does: a new pod-template annotation."""
        patch = {"spec": {"template": {"metadata": {"annotations": {ROTATION_ANNOTATION: stamp}}}}}
        self._request(
            "PATCH",
            self._path("/apis/apps/v1", "deployments", name),
            patch,
            content_type="application/merge-patch+json",
        )

    def deployment_rolled_out(self, name: str) -> bool:
        """Every replica runs the newest template and is available (``kubectl rollout status``)."""
        deployment = self._request("GET", self._path("/apis/apps/v1", "deployments", name))
        wanted = int(deployment.get("spec", {}).get("replicas", 1))
        status = deployment.get("status", {})
        return bool(
            int(status.get("observedGeneration", 0)) >= int(deployment["metadata"].get("generation", 0))
            and int(status.get("updatedReplicas", 0)) == wanted
            and int(status.get("replicas", 0)) == wanted
            and int(status.get("availableReplicas", 0)) == wanted
        )


@dataclass(frozen=True, slots=True)
class SecretRef:
    name: str
    kek_key: str = "kek"
    lookup_key: str = "lookup-secret"


@dataclass(frozen=True, slots=True)
class RotationReport:
    kek_id: str
    keys_rewrapped: int
    destroyed_kek_ids: list[str]
    started_new_kek: bool


def _decode(secret: Mapping[str, Any], key: str) -> bytes:
    encoded = (secret.get("data") or {}).get(key)
    if not encoded:
        raise RotationError(f"Secret {secret['metadata']['name']} has no key {key!r}")
    return base64.b64decode(encoded)


def _write_keyring(api: KubernetesApi, secret: dict[str, Any], ref: SecretRef, keyring: Keyring) -> None:
    secret.setdefault("data", {})[ref.kek_key] = base64.b64encode(keyring.to_json().encode()).decode()
    api.replace_secret(secret)


def _restart(
    api: KubernetesApi, deployment: str, *, timeout: float, poll: float, clock: Callable[[], float]
) -> None:
    api.restart_deployment(deployment, datetime.now(UTC).isoformat())
    deadline = clock() + timeout
    while not api.deployment_rolled_out(deployment):
        if clock() > deadline:
            raise RotationError(f"Deployment {deployment} did not roll out within {timeout:.0f} s")
        time.sleep(poll)


def rotate_in_kubernetes(
    *,
    api: KubernetesApi,
    ref: SecretRef,
    deployment: str,
    open_store: Callable[[KeyMaterial], GdprStore],
    rollout_timeout: float = 900.0,
    poll_seconds: float = 2.0,
    clock: Callable[[], float] = time.monotonic,
) -> RotationReport:
    """Steps 1-4 of the module docstring. ``open_store`` opens the gdpr database with the given keys."""
    secret = api.get_secret(ref.name)
    keyring = parse_keyring(_decode(secret, ref.kek_key))
    lookup = _decode(secret, ref.lookup_key).strip()
    started = len(keyring) == 1
    if started:
        keyring = keyring.with_new_active()
        _write_keyring(api, secret, ref, keyring)
        log.info("new KEK written to the Secret", extra={"kek_id": keyring.active_id, "secret": ref.name})
    else:
        log.info(
            "resuming an unfinished rotation", extra={"kek_id": keyring.active_id, "kek_ids": sorted(keyring)}
        )
    _restart(api, deployment, timeout=rollout_timeout, poll=poll_seconds, clock=clock)
    store = open_store(KeyMaterial(keyring=keyring, lookup_secret=lookup, keyring_file=None))
    rewrapped = store.rewrap_pending(actor=ACTOR)
    usage = store.kek_usage()
    stuck = {kek_id: count for kek_id, count in usage.items() if kek_id != keyring.active_id and count}
    if stuck:
        # A KEK that still wraps keys is kept: deleting it would lose those keys' data.
        raise RotationError(
            f"data keys are still wrapped under old KEKs {sorted(stuck)}; the next run retries"
        )
    retired = sorted(kek_id for kek_id in keyring if kek_id != keyring.active_id)
    if retired:
        remaining = keyring
        for kek_id in retired:
            remaining = remaining.without(kek_id)
        secret = api.get_secret(ref.name)
        if parse_keyring(_decode(secret, ref.kek_key)).active_id != keyring.active_id:
            raise RotationError("the Secret's active KEK changed during the rotation; nothing deleted")
        _write_keyring(api, secret, ref, remaining)
        store.record_kek_destroyed(retired, actor=ACTOR, reason=f"{rewrapped} keys re-wrapped by the job")
        # No gdpr pod may keep the deleted KEK in memory.
        _restart(api, deployment, timeout=rollout_timeout, poll=poll_seconds, clock=clock)
        log.info("old KEKs deleted from the Secret", extra={"kek_ids": retired, "secret": ref.name})
    return RotationReport(
        kek_id=keyring.active_id, keys_rewrapped=rewrapped, destroyed_kek_ids=retired, started_new_kek=started
    )
