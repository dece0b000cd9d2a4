from layerfleet.cli import main

raise SystemExit(main())
