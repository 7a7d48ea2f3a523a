"""``python -m mfdsl.cli`` (used by torchrun, which needs a module to run)."""
from .app import main

if __name__ == "__main__":
    main(prog_name="mfdsl")
