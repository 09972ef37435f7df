"""Pure-NumPy references: the specification every kernel and chapter is checked against.

Each module imports only NumPy and the standard library (plus reference.common), so a
reader can copy one file into their own project.
"""
