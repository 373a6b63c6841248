"""edgekit.runtime."""
