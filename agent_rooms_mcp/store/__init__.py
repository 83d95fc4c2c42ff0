"""The SQLite store: connections, migrations, named loads and per-room wake-ups for long polls."""
