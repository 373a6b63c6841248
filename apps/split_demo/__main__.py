from ._demo import main

raise SystemExit(main())
