"""Target discovery (integration plan to follow)."""
