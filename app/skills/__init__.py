"""Built-in skills: tools with their own storage (off by default)."""
