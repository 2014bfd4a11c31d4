#!/usr/bin/env python3
"""GETs a URL. usage: scrape.py URL [metrics]

With `metrics`, parses the body with prometheus_client's text-format parser (the one
Prometheus' own Python client ships) and prints every sample as JSON:
[[name, {label: value}, value, family type], ...]. A page the parser rejects fails the run.
Without it, prints the body as is."""
import json
import sys
import urllib.request

body = urllib.request.urlopen(sys.argv[1], timeout=5).read().decode()
if len(sys.argv) > 2 and sys.argv[2] == "metrics":
    from prometheus_client.parser import text_string_to_metric_families

    samples = []
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            samples.append([s.name, s.labels, s.value, family.type])
    print(json.dumps(samples))
else:
    print(body)
