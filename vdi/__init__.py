"""Command line, configuration file and local lab of smartwork-vdi."""
