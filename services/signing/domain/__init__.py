"""Pure signing logic: PKI files, C2SP checkpoints and an RFC 3161 time-stamp authority."""
