"""The embedded sample: PyX / PyX-R records generated from really executed code, and a small tokenizer.

``data/`` holds ``pyx_sample.jsonl.gz`` (nl2code, exec_o, exec_i) and ``pyx_r_sample.jsonl.gz``
(refine); ``tokenizer/`` a byte-level BPE (vocab 1024, ``<s>``/``</s>``/``<pad>``) trained on them.
Both are produced by ``data_pipeline.sample.generate`` (``semcoder data make-sample``).
"""

from __future__ import annotations

import pathlib

_HERE = pathlib.Path(__file__).resolve().parent


def sample_data_dir() -> pathlib.Path:
    """Directory of the sample JSON Lines files (PyX and PyX-R)."""
    return _HERE / "data"


def sample_tokenizer_dir() -> pathlib.Path:
    """Directory of the sample tokenizer (loads with ``load_tokenizer`` and ``AutoTokenizer``)."""
    return _HERE / "tokenizer"


def sample_files() -> list[pathlib.Path]:
    """The sample data files, sorted."""
    return sorted(sample_data_dir().glob("*.jsonl.gz"))
