"""The inference engine: backends, delegates, hardware detection, models, results."""
