"""The mount, FUSE only: POSIX semantics (``vfs``), the write and read paths, the pyfuse3 adapter
(``operations``; with ``daemon`` the only modules importing pyfuse3), control files, prefetch plans,
observation, and the daemon's life cycle.

Imports ``lake`` and below; never ``admin`` or ``cli``.
"""
