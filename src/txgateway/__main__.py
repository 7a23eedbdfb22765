"""C{python -m txgateway}: the same as the C{txgateway} console script."""

from txgateway.cli import main

raise SystemExit(main())
