"""Disk-level formats around a file system image: GPT disk images, dm-verity, signatures.

A lower layer like ``squashfs/``: it imports nothing above ``rules/`` and ``errors``.
"""
