"""imprint models."""
