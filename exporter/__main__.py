"""`python -m exporter`: the same as the `healthcheck-exporter` console script."""

from exporter.cli import main

raise SystemExit(main())
