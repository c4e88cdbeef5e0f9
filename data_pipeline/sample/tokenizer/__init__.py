"""Sample byte-level BPE tokenizer files (package data; see ``data_pipeline.sample``)."""
