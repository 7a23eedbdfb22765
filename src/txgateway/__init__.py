"""txgateway: an API gateway and reverse proxy on Twisted."""

__version__ = "0.1.0"
