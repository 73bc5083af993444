"""What every test directory shares: the suite as processes (``suite``), in-process servers
(``servers``) and the ports and databases a test borrows (``resources``)."""
