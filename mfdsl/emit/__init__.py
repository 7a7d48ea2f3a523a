"""Printers from the IR back to source: canonical .mf and .yaml."""
