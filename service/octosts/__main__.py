from octosts.cli import main

raise SystemExit(main())
