from belle.eval.cli import main

raise SystemExit(main())
