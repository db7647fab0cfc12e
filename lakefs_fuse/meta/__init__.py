"""Metadata: key schema, the deterministic state machine, and the clients the mount uses.

May import only the project's bottom layer (errors, config). Never ``chunks`` or ``mount``.
"""
