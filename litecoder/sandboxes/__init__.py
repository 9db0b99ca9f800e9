"""Sandboxes: where commands written by a model run (never on the host)."""
