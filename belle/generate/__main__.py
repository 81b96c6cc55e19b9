from belle.generate.cli import main

raise SystemExit(main())
