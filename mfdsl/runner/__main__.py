"""``python -m mfdsl.runner ...`` == ``mfdsl ...``; the entry torchrun runs:

    torchrun --nproc_per_node 2 -m mfdsl.runner train SPEC --data DIR
"""
from ..cli import main

if __name__ == "__main__":
    main(prog_name="mfdsl")
