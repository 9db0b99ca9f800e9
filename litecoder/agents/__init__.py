"""Agents: the teacher (``terminus``) and the environment preparer (``preparer``), on one loop."""

from __future__ import annotations


