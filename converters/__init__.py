"""edgekit.converters."""
