from forgebuild.cli import main

raise SystemExit(main())
