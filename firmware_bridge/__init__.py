"""Serial protocol between the inspection head and the line controller (codec, server, client)."""
