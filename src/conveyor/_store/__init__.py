"""The only package that writes SQL or talks to PostgreSQL."""
