"""edgeloop: tools."""
