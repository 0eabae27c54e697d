"""``saie-lite bench``: timed parts, the speed levers before/after, and the report."""
