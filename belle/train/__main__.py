from belle.train.cli import main

raise SystemExit(main())
