"""musicgen-train."""
