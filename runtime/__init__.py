"""edgeloop: runtime."""
