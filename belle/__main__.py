from belle.cli import main

raise SystemExit(main())
