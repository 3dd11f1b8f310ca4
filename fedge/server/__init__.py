"""fedge.server."""
