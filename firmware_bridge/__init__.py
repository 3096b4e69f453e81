"""edgeloop: firmware_bridge."""
