"""Target sources (Prometheus's `discovery/` shape): one module per source, one union.

Every source implements `exporter.sources.base.Source`: a snapshot of its current targets (the
seed's `TargetProvider`), a task that keeps it current, and its own health for `/metrics`.
"""
