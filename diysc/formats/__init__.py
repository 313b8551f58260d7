"""The files stages hand each other: their layouts, readers and writers.

Leaf modules: producers (the stage that writes a file) and consumers (the stages that read it) both
import them, and they import neither, so a stage that only reads a file does not depend on the code
that computed it (`pyproject.toml`'s import-linter contracts keep it so).
"""
