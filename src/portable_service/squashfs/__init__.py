"""A squashfs 4.0 writer and reader in pure Python.

One job per module, after squashfs-tools-ng's libsquashfs: ``format`` (on-disk
records), ``compressor``, ``metadata`` (8 KiB metadata blocks), ``data``
(file blocks, fragments, dedupe, sparse), ``directory``, ``tables`` (id,
fragment, export, xattr), ``writer`` and ``reader``.
"""
