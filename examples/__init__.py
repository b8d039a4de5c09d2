"""Runnable examples of integrating with Clickpass."""
