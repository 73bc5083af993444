"""Evidence formats that more than one service reads or writes; not a service.

- ``canonical``: the canonical JSON (RFC 8785 for the value types used) of every sealed document.
- ``envelope``: personal fields and label notes sealed with AES-256-GCM under a subject's data key
  (ingest seals them, gdpr opens them for an export).
- ``checkpoint``: C2SP signed notes and tlog checkpoints (signing signs them, ingest's offline
  verifier checks them).
- ``timestamp``: RFC 3161 requests for a SHA-256 digest and the tokens taken out of the replies
  (analytics time-stamps each issued report; ``awareness verify --report`` reads the token back).
- ``report_evidence``: a weekly report's ``FILE.evidence.json`` (the analytics CLI and the portal
  write it, ``awareness verify --report`` reads it).
- ``errors``: what these raise, under the runtime's one error root.

Services import this package and the runtime, never each other.
"""
