"""Local mode: the same pipeline definition, executed on this machine without AWS or Docker."""
