"""Host weighers, one per module."""
