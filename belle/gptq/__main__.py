from belle.gptq.cli import main

raise SystemExit(main())
