"""Host filters, one per module."""
