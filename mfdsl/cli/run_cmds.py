"""(commands are added by their owners)"""
from . import main  # noqa: F401
