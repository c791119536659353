"""Run the assistant's commands: `python -m bot --help`."""
from bot.cli import main

raise SystemExit(main())
