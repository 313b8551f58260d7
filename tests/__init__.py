"""The test suite (a package, so tests import each other's helpers)."""
