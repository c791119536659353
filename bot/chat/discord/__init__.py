"""Discord: the discord.py client, its slash commands and views, rendering and sending."""
