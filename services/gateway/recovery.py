"""After a restore: revoke again every API key revoked since the backup.

The restored key store is as of the backup, so a key revoked after it would be valid again. Every
revocation (``awareness keys revoke``, the portal's admin page) leaves an ``api_key.revoke`` access
record in the log, which the reconciliation has brought back; replaying them is idempotent (a key
keeps its first revocation time). Keys created since the backup are simply gone: their holders get
401 and need a new key, the safe direction.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from sqlalchemy.orm import Session, sessionmaker

from services.gateway import repository
from services.runtime.db import transaction

REVOKE_ACTION = "api_key.revoke"
_RESOURCE_PREFIX = "apiKeys/"


def replay_revocations(sessions: sessionmaker[Session], resources: Iterable[str]) -> list[str]:
    """Revoke each ``apiKeys/<id>`` that the store holds as active; the key ids revoked now."""
    revoked = []
    now = datetime.now(UTC)
    with transaction(sessions) as session:
        for resource in resources:
            if not resource.startswith(_RESOURCE_PREFIX):
                continue
            key_id = resource.removeprefix(_RESOURCE_PREFIX)
            before = repository.find_key(session, key_id=key_id)
            if before is None or before.revoked_at is not None:
                continue
            repository.revoke_key(session, key_id=key_id, now=now)
            revoked.append(key_id)
    return revoked
