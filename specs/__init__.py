"""The model zoo: one spec per paper model (shipped in the wheel as ``mfdsl.zoo``)."""
