"""`python -m engine` is the same as the `nst` command."""

from engine.cli import main

raise SystemExit(main())
