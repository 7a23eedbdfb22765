# -*- test-case-name: tests.test_cli -*-
"""C{python -m txgateway}: the same as the C{txgateway} console script."""

from txgateway.cli import main

__all__: list[str] = []

raise SystemExit(main())
