from mistral_sandbox.cli import main

raise SystemExit(main())
