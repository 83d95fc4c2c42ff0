"""The services: each action of DESIGN §3-§5 as one transaction (policy check, write, audit row) over the store."""
