"""The twistd plugin: C{twistd -n txgateway --config gw.yaml}."""

from twisted.application.service import ServiceMaker

txgateway = ServiceMaker(
    "txgateway",
    "txgateway.tap",
    "An API gateway and reverse proxy: routing, balancing, health, limits, cache, auth.",
    "txgateway",
)
