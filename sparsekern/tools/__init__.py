"""The tools around the library: the `sparsekern` command (cli), its demo and bench, and
the side-by-side timing every speed figure comes from."""
