"""The wake supervisor: runs coding CLIs headless for agents that were mentioned or assigned work."""
