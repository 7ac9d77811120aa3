"""Fault campaign (issue 14): power cuts, torn sectors, a full or inode-less p7 and two operations at
once, during every operation of liveng's that writes; each round checked after a boot with nobody
at the console. See __main__.py for the command line; bench/RESULTS.md for the record."""
