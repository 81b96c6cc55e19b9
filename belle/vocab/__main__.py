from belle.vocab.cli import main

raise SystemExit(main())
