"""edgeloop: sync."""
