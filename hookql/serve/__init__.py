"""`hookql serve`: scripts as a long-running service, their aggregations as Prometheus metrics.

One file per part, in the order a scrape meets them:

- cli.py: the command line (`hookql serve [--listen ADDR:PORT] ... SCRIPT|DIR ...`)
- service.py: the service: load every script, attach, drain on a tick, reload on SIGHUP, stop on SIGTERM
- units.py: one loaded script (its object, links, layout), built for serving (codegen's serve mode)
- drain.py: taking a map's counts out of the kernel with nothing lost (two maps written by turns)
- series.py: the service's own running totals, per metric, with a cap on label sets (overflow folded)
- naming.py: metric names, HELP text, label names and values from a script's aggregations
- exporter.py: the prometheus_client collector that turns all of it into metric families at scrape time
- http.py: the HTTP listener (/metrics in text or OpenMetrics, /healthz)
"""
