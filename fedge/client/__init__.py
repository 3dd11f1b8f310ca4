"""fedge.client."""
