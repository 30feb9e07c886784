"""Trace destinations: senders by type (``SENDERS``) and the per-destination delivery queue."""
