"""edgekit.devices."""
