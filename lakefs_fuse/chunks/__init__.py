"""Chunks: the codec (``codec``), shard layout (``layout``), placement (``placement``), shard files
(``shardfile``), peers of every kind behind one ``ShardStore`` interface (``store`` local
directories, ``netstore`` + ``peer_server`` peer servers, ``s3store`` buckets), peer health and
hedged reads (``health``), the chunk client (``client``: put/get/verify/repair queue) and the
caches (``cache`` memory, ``diskcache`` disk).

May import only the base layer (errors, config, wire, rpc, metrics). Never ``meta`` or anything above.
"""
