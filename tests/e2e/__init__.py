"""End-to-end tests: images built by the project, judged by a real systemd (247, 252, 257)."""
