from belle.models.cli import main

raise SystemExit(main())
