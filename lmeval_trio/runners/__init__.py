"""Where jobs run: the backends (local processes, Ray) and what they share."""
