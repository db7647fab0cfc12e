"""The mount, FUSE only. ``operations`` is the pyfuse3 adapter (with ``daemon`` the only modules
importing pyfuse3); ``vfs`` the POSIX namespace, open/close and the parts it is built from:
``inodes`` (lookup counts, freeing at last close), ``handles``, ``reader`` (layout cache, memory ->
disk -> peer tiers, read-ahead), ``writer`` (buffers, admission, seals), ``control`` (.stats,
.config, .prefetch), ``prefetch`` (read plans), ``pagecache`` (what the kernel holds);
``observe`` (metrics), ``mounttab`` (the mount table and registry), ``daemon`` (the process).

Imports ``lake`` and below; never ``admin`` or ``cli``.
"""
