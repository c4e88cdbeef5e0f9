"""The PyX builder: real Python code -> verified NL->code, forward/backward monologues and PyX-R records.

Stages (each a pure function of its inputs, cached by content hash by ``build``):
``seeds`` (sample functions from real code, static filters, dedup) -> ``decontam`` -> ``inputs`` (run, mutate,
cover) -> ``trace`` (line-level states) -> ``monologue`` / ``refine`` (records) -> output in the released schema.
"""
