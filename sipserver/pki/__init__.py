"""Certificates: describe, identify peers, choose and generate ours. Pure: no I/O, no clock."""
