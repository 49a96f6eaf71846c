#!/usr/bin/env python3
"""Scrapes a node's Prometheus endpoint and parses it with prometheus_client's text parser
(the Prometheus project's own Python client), printing every sample as one JSON line:
{"name": ..., "labels": {...}, "value": ...}. Exits non-zero if the text does not parse.

    scrape_metrics.py http://127.0.0.1:9100/metrics
    scrape_metrics.py https://127.0.0.1:9100/metrics CA.pem    (checks the node's certificate)
"""
import json
import ssl
import sys
import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def main():
    url = sys.argv[1]
    context = ssl.create_default_context(cafile=sys.argv[2]) if len(sys.argv) > 2 else None
    with urllib.request.urlopen(url, timeout=10, context=context) as response:
        content_type = response.headers.get("Content-Type", "")
        if not content_type.startswith("text/plain"):
            sys.exit(f"unexpected content type {content_type!r}")
        text = response.read().decode("utf-8")
    # The parser is lenient: a family named twice, or its samples split, would just make two
    # families. Every `# TYPE` must name a new family, and each family's samples follow it.
    typed = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]
    repeated = sorted({name for name in typed if typed.count(name) > 1})
    if repeated:
        sys.exit(f"families declared more than once: {repeated}")
    families = list(text_string_to_metric_families(text))
    names = [family.name for family in families]
    if len(names) != len(set(names)):
        sys.exit(f"a family's samples are split: {sorted(n for n in names if names.count(n) > 1)}")
    for family in families:
        for sample in family.samples:
            print(json.dumps({"name": sample.name, "labels": sample.labels, "value": sample.value,
                              "type": family.type}))


if __name__ == "__main__":
    main()
