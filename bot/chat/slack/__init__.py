"""Slack: the bolt app, its listeners, rendering to Block Kit, the signed-request door and sending."""
