"""The mount: POSIX semantics (``vfs``), the write and read paths, the pyfuse3 adapter
(``operations``, the only module importing pyfuse3 besides ``daemon``), and lake opening
(``lake``), which joins ``meta`` and ``chunks``.
"""
