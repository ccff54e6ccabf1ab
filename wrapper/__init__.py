"""soci-wrapper: build and push SOCI indexes for container images in one dependable command."""

__version__ = "0.1.0"
