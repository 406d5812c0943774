"""wheelsched: a distributed job scheduler with a timing-wheel core."""

__version__ = "0.1.0"
