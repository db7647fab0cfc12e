"""Metadata: key schema, the deterministic state machine, and the clients the mount uses.

May import only the base layer (errors, config, wire, metrics). Never ``chunks`` or anything above.
"""
