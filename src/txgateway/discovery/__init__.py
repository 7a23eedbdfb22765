# -*- test-case-name: tests.test_discovery_config,tests.test_discovery_dns,tests.test_discovery_files,tests.test_membership -*-
"""
Target discovery: upstream targets that come and go (issue 22).

Modules
=======
  interfaces.py  L{ITargetSource} (an IService: C{targets}, C{counters},
                 C{subscribe(listener)}, C{whenReady()}, C{refresh()}) and
                 the value it delivers, L{DiscoveredTarget} (scheme, host,
                 port, weight, source; C{.url}, C{.hostPort}), plus
                 L{SourceCounters}.
  base.py        shared by every source: sort and dedupe an answer, compare
                 with the current set (an unchanged answer calls no
                 listener), C{on_empty: keep | drop}, counters, logging, the
                 C{observe(outcome)} hook (changed / unchanged / empty /
                 failed) that metrics plug into.
  dns.py         L{AddressSource} (C{{dns: NAME, port: P}}: every A/AAAA
                 address) and L{ServiceSource} (C{{dns_srv: _svc._tcp.NAME}}:
                 SRV ports and weights, lowest priority group), on
                 C{twisted.names}; re-resolved after the smallest TTL, at
                 most C{refresh}, at least 1s; failures keep the last good
                 set and back off 1s, 2s, 4s ... up to C{refresh}.
                 L{makeResolver} builds the one resolver a gateway shares
                 (C{discovery.nameservers}, else resolv.conf + hosts file).
  files.py       L{FileSource} (C{{file: PATH}}): a YAML list of URLs or
                 C{url:}/C{weight:} mappings, polled like the config file; a
                 bad edit keeps the last good set and logs its line.
  slowstart.py   the C{slow_start} ramp as pure functions of elapsed time.
  config.py      the specs (parsed by L{txgateway.config.parser_discovery}
                 into L{txgateway.config.schema_discovery}) and the URL and
                 weight conversion of targets files, on the config
                 package's own converters.
  build.py       L{makeSource}: spec -> not yet started source.
  service.py     L{DiscoveryService}: the shared resolver and every running
                 source, keyed by (upstream, item index, spec), so a reload
                 keeps the sources whose item is unchanged.

How it is wired in
==================
  - config: C{upstreams.NAME.targets[]} items C{{dns: ...}}, C{{dns_srv: ...}},
    C{{file: ...}} become C{UpstreamConfig.sources}; C{slow_start} and the
    top-level C{discovery.nameservers} (L{txgateway.config.parser_discovery}).
  - L{txgateway.membership}: per cluster, merges the static targets with each
    source's answer, keeps Endpoint state for targets that stay, gates and
    ramps new ones, retires removed ones, and holds the admin API's overrides.
  - L{txgateway.discovering}: the gateway service's glue (sources to the
    clusters of every runtime it builds; the reload's "dropped" log line).
  - L{txgateway.admin.targets}: drain / disable / enable / weight.
  - Metrics: C{txgateway_upstream_targets{upstream, state}} and
    C{txgateway_discovery_refreshes{upstream, source, outcome}}.

Layers: this package is below C{cluster} and above C{config} (see setup.cfg);
it knows nothing of clusters or Endpoints, only L{ITargetSource} and specs.
"""

__all__: list[str] = []
