"""The ``pyx`` TensorFlow Datasets builder: released PyX / PyX-R JSON Lines (manual dir) to TFDS.

Put the released ``.jsonl`` / ``.jsonl.gz`` files (PyX, PyX-R, or chat-format records) in a
directory and prepare with ``semcoder data prepare-tfds --manual-dir DIR --data-dir OUT`` (or
``tfds.builder("pyx", data_dir=OUT).download_and_prepare(download_config=...manual_dir=DIR)``).
Every record is validated with ``data_pipeline.records``; invalid ones are skipped, counted by reason
in ``info.metadata["bad_records"]`` and listed in ``OUT/pyx/<version>/bad_records.jsonl``.
``validation`` holds ``VALIDATION_PERCENT`` % of the records, chosen by a hash of the record's
bytes (stable across runs and file orders; the release held out 5 % of PyX-R for eval loss).

Features are the record fields as text (empty when absent) plus ``task`` and ``source``
(``FILE:LINE``), so the stored shards are ``tf.train.Example`` records that the pipeline reads like
any other TFRecord shard.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import pathlib

import tensorflow_datasets as tfds

from data_pipeline.errors import UserError
from data_pipeline.records import TASK_FIELDS, BadRecord, iter_jsonl

VALIDATION_PERCENT = 5
FIELDS = (*TASK_FIELDS, "response", "task", "source")


def _split_of(record_text: str) -> str:
    digest = hashlib.blake2b(record_text.encode("utf-8"), digest_size=8).digest()
    return "validation" if int.from_bytes(digest, "little") % 100 < VALIDATION_PERCENT else "train"


class Pyx(tfds.core.GeneratorBasedBuilder):
    """PyX (NL to code, forward and backward monologues) and PyX-R (debug and refine) records."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "PyX / PyX-R JSON Lines as released by SemCoder, validated."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Place the released PyX / PyX-R JSON Lines files (.jsonl or .jsonl.gz) in the manual directory.")

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict({name: tfds.features.Text() for name in FIELDS}),
            homepage="https://github.com/ARiSE-Lab/SemCoder",
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        manual = pathlib.Path(dl_manager.manual_dir)
        files = sorted(p for p in manual.iterdir() if p.name.endswith((".jsonl", ".jsonl.gz")))
        if not files:
            raise UserError(f"{manual}: no .jsonl or .jsonl.gz files to prepare")
        self._bad = collections.Counter()
        self._bad_lines: list[str] = []
        return {"train": self._generate_examples(files, "train"),
                "validation": self._generate_examples(files, "validation")}

    def _generate_examples(self, files: list[pathlib.Path], split: str):
        for path in files:
            for item in iter_jsonl(path):
                if isinstance(item, BadRecord):
                    if split == "train":  # count each bad record once, not once per split
                        self._bad[item.reason] += 1
                        self._bad_lines.append(json.dumps(item.to_json(), ensure_ascii=False))
                        self.info.metadata["bad_records"] = dict(self._bad)
                    continue
                if _split_of(item.instruction + "\0" + item.response) != split:
                    continue
                features = dict.fromkeys(TASK_FIELDS, "")
                features[{v: k for k, v in TASK_FIELDS.items()}[item.task]] = item.instruction
                features.update(response=item.response, task=item.task, source=f"{path.name}:{item.source.rsplit(':', 1)[1]}")
                yield f"{path.name}:{item.source.rsplit(':', 1)[1]}", features
        if split == "train":
            self.info.metadata.setdefault("bad_records", {})


def prepare(manual_dir: str | os.PathLike, data_dir: str | os.PathLike) -> tfds.core.DatasetBuilder:
    """Validate and convert the JSON Lines files in ``manual_dir`` into ``data_dir/pyx``."""
    builder = tfds.builder("pyx", data_dir=str(data_dir))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
    bad_lines = getattr(builder, "_bad_lines", [])
    sidecar = pathlib.Path(builder.data_dir) / "bad_records.jsonl"
    tmp = sidecar.with_name(sidecar.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in bad_lines), encoding="utf-8")
    os.replace(tmp, sidecar)
    return builder
