"""fedge.tasks."""
