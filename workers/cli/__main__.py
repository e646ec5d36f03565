"""`python -m workers.cli ...` = `iad ...` (what `iad up` uses to start its worker)."""

from workers.cli import main

raise SystemExit(main())
