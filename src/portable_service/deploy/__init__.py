"""Deploying stacks of portable images: the descriptor, attach/detach/reattach, predictions."""
