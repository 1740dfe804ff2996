"""A throwaway real systemd to judge images: cached Debian roots booted with systemd-nspawn."""
