"""Disk-level formats around a file system image: GPT disk images, dm-verity hash trees and root-hash
signatures. A lower layer like squashfs/: it imports only errors.py and run.py."""
