# -*- test-case-name: tests.test_cli -*-
"""txgateway: an API gateway and reverse proxy on Twisted."""

__all__ = ["__version__"]

__version__ = "0.1.0"
