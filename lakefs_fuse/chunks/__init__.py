"""Chunk store: codec, shard layout, placement, shard files, peers, the chunk client, caches.

May import only the project's bottom layer (errors, config). Never ``meta`` or ``mount``.
"""
