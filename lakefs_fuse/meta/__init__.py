"""Metadata: the key schema, the typed command catalogue, the deterministic state machine, Raft,
and the clients the layers above use.

``schema`` (every key prefix and record, encoders and decoders), ``commands`` (one dataclass per
command: the catalogue, and its wire form), ``state`` (the state machine core: apply, queries,
lake-wide commands) with ``txn`` (read-your-writes batch), ``namespace`` and ``data`` (the command
handlers), ``fsck`` (the key-space analysis), ``client`` (the ``MetaClient`` interface and the
embedded ``LocalMeta``), ``remote`` (the cluster client), ``server``/``replica`` (a metadata server),
``raft``/``raftlog`` (consensus and its storage), ``memory_network`` (Raft's in-memory test network),
``budget`` (one metadata timeout per FUSE request).

May import only the base layer (errors, config, wire, rpc, metrics). Never ``chunks`` or anything above.
"""
