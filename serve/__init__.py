"""modelgate's serving side: the CLI today; the Ray Serve gateway builds on it."""
