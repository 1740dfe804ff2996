"""Deploying images: the download folder hosts update from, and the files a host needs."""
