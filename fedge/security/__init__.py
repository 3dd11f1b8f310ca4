"""fedge.security."""
