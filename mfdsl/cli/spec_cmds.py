"""(spec commands)"""
from . import main  # noqa: F401
