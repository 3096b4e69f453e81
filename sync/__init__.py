"""Store-and-forward sync to the regional edge (outbox, codec, MQTT link): issue 4."""
