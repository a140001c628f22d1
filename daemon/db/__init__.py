"""Database access: connections, migrations and every runtime query."""
