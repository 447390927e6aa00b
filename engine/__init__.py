"""imprint engine."""
