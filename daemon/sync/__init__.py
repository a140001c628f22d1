"""Per-date sync execution: the handler API, the built-in handlers and the daemon's run loop."""
