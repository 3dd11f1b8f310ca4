"""An example fedge task: diabetes progression regression on tabular CSV data."""
