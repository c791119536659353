"""Running the bot: the serve and worker processes, health, metrics, logs, retention and the dashboard."""
