"""Run the assistant's commands: `python -m bot --help`."""
from .cli import main

raise SystemExit(main())
