from belle.chat.cli import main

raise SystemExit(main())
