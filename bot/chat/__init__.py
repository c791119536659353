"""Chat transports: the only home of the Slack and Discord SDKs, the outbox and the terminal chat."""
