"""`seqr demo`: the whole system on real text that ships with Python."""
