from minisage.cli import main

raise SystemExit(main())
