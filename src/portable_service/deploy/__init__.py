"""Deploying images: stacks of portable images (the descriptor, attach/detach/reattach, what a
reattach will change), the download folder hosts update from, and the files a host needs."""
