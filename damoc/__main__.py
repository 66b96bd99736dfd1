from damoc.cli import main

raise SystemExit(main())
