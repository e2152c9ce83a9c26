"""HAProxy integration: the config file writer, reloads and the Runtime API."""
