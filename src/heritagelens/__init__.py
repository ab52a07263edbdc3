"""HeritageLens: recognise architectural heritage elements and show what the network has learned."""

__version__ = "0.1.0"
