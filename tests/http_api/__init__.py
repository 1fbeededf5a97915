"""End-to-end tests of the REST side (CONTRACT §1, §3) against a running server."""
