"""Backup, restore and reconciliation of the whole suite (docs/disaster-recovery.md)."""
