from belle.export.cli import main

raise SystemExit(main())
