from belle.data.cli import main

raise SystemExit(main())
