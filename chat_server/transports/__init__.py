"""Adapters of other wire dialects onto the session core (the Vercel AI SDK's transports)."""
