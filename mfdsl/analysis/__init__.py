"""Analysis of what a spec builds: parameters, MACs, memory, graphs."""
