"""Attackers built on fedge's own code: an enrolled device that seals and signs correctly, yet lies."""
