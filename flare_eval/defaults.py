"""Defaults that the API and the command line share, in a module that imports nothing heavy.

The command line reads them to build its help; keeping them here spares every command the import of
pandas and SciPy before it has parsed its arguments.
"""

__all__ = ["DEFAULT_SEED"]

#: Seed of every bootstrap when none is given (rank, evaluate, compare): a rerun gives bit-identical tables.
DEFAULT_SEED = 2022
