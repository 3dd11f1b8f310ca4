"""fedge.sim."""
