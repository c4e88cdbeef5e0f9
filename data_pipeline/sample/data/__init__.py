"""Sample PyX / PyX-R JSON Lines (package data; see ``data_pipeline.sample``)."""
