"""Tokenizers behind one small interface: HF (``tokenizer.json`` / a tokenizer directory) and SentencePiece.

Everything downstream (examples, the pipeline, the sampler, the eval harness) sees a ``Tokenizer``:
``encode`` never adds special tokens (the release tokenizes prompt and response separately and adds
bos/eos itself), ``bos_id``/``eos_id``/``pad_id`` are plain ints, and ``save`` writes a directory that
``transformers.AutoTokenizer.from_pretrained`` loads.  The pad id falls back to eos when the tokenizer
has none, as the release does; padding is identified by ``segment_ids == 0``, never by comparing ids,
so a pad id equal to eos never masks a real eos out of the loss.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import tempfile
from collections.abc import Sequence

from data_pipeline import remote
from data_pipeline.errors import UserError

# Names of special tokens that tokenizer.json files commonly use, tried when no config says which.
_BOS_NAMES = ("<｜begin▁of▁sentence｜>", "<s>", "<bos>", "<|bos|>", "<|begin_of_text|>", "<|startoftext|>")
_EOS_NAMES = ("<｜end▁of▁sentence｜>", "</s>", "<eos>", "<|eos|>", "<|end_of_text|>", "<|endoftext|>")
_PAD_NAMES = ("<pad>", "<|pad|>", "[PAD]", "<｜pad｜>")


class TokenizerError(UserError):
    """A tokenizer path or special-token setting that cannot be used."""


class Tokenizer:
    """The interface every tokenizer backend implements."""

    bos_id: int
    eos_id: int
    pad_id: int
    vocab_size: int
    source: str

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` with no special tokens added."""
        raise NotImplementedError

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """``encode`` over many texts (backends override this with a faster native batch call)."""
        return [self.encode(t) for t in texts]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of ``ids``; special tokens are dropped unless ``skip_special_tokens`` is False."""
        raise NotImplementedError

    def save(self, directory: str | os.PathLike) -> None:
        """Write files so that ``AutoTokenizer.from_pretrained(directory)`` loads this tokenizer."""
        raise NotImplementedError

    def token_name(self, token_id: int) -> str:
        """The vocabulary string of one id (for messages)."""
        raise NotImplementedError

    def _resolve_special(self, found: dict[str, int | None], overrides: dict[str, int | None]) -> None:
        for name in ("bos", "eos", "pad"):
            value = overrides.get(name)
            if value is None:
                value = found.get(name)
            if value is None and name == "pad":
                value = self.eos_id
            if value is None:
                raise TokenizerError(
                    f"{self.source}: no {name} token found; pass {name}_id explicitly (e.g. --{name}-id)")
            value = int(value)
            if not 0 <= value < self.vocab_size:
                raise TokenizerError(f"{self.source}: {name}_id {value} is outside the vocabulary [0, {self.vocab_size})")
            setattr(self, f"{name}_id", value)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.source!r}, vocab_size={self.vocab_size}, bos_id={self.bos_id}, "
                f"eos_id={self.eos_id}, pad_id={self.pad_id})")


def _write_dir_atomically(directory: pathlib.Path, files: dict[str, bytes | pathlib.Path]) -> None:
    """Write ``files`` into ``directory`` via a temporary sibling, renaming each into place."""
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory, prefix=".tmp-tok-") as tmp:
        for name, content in files.items():
            target = pathlib.Path(tmp) / name
            if isinstance(content, pathlib.Path):
                shutil.copyfile(content, target)
            else:
                target.write_bytes(content)
        for name in files:
            os.replace(pathlib.Path(tmp) / name, directory / name)


class HFTokenizer(Tokenizer):
    """A ``tokenizers`` (Rust) tokenizer, as in HF's ``tokenizer.json`` (DeepSeek-Coder is one)."""

    def __init__(self, backend, source: str, found: dict[str, int | None], overrides: dict[str, int | None],
                 extra_config: dict | None = None):
        self._tok = backend
        self.source = source
        self.vocab_size = int(backend.get_vocab_size(with_added_tokens=True))
        self._extra_config = dict(extra_config or {})
        self._resolve_special(found, overrides)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        # encode_batch_fast skips character offsets (same ids, ~10 % less work); it releases the GIL,
        # so tf.data's parallel map tokenizes several windows at once.
        encode = getattr(self._tok, "encode_batch_fast", self._tok.encode_batch)
        return [e.ids for e in encode(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def token_name(self, token_id: int) -> str:
        return self._tok.id_to_token(int(token_id)) or f"<id {token_id}>"

    def save(self, directory: str | os.PathLike) -> None:
        directory = pathlib.Path(directory)
        config = {k: v for k, v in self._extra_config.items()
                  if k not in ("bos_token", "eos_token", "pad_token", "tokenizer_class", "added_tokens_decoder",
                               "tokenizer_file", "auto_map", "name_or_path")}
        config.update({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": self.token_name(self.bos_id),
            "eos_token": self.token_name(self.eos_id),
            "pad_token": self.token_name(self.pad_id),
            "add_bos_token": False,
            "add_eos_token": False,
            "clean_up_tokenization_spaces": False,
        })
        config.setdefault("model_max_length", 16384)
        special = {k: config[k] for k in ("bos_token", "eos_token", "pad_token")}
        _write_dir_atomically(directory, {
            "tokenizer.json": self._tok.to_str().encode(),
            "tokenizer_config.json": (json.dumps(config, indent=2, ensure_ascii=False) + "\n").encode(),
            "special_tokens_map.json": (json.dumps(special, indent=2, ensure_ascii=False) + "\n").encode(),
        })


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece ``.model`` (LLaMA-style tokenizers)."""

    def __init__(self, model_file: pathlib.Path, overrides: dict[str, int | None],
                 configured: dict[str, str] | None = None):
        import sentencepiece

        self.source = str(model_file)
        try:
            self._sp = sentencepiece.SentencePieceProcessor(model_file=str(model_file))
        except (OSError, RuntimeError) as e:
            raise TokenizerError(f"{model_file}: not a SentencePiece model ({e})") from e
        self._model = model_file.read_bytes()  # save() needs it after a downloaded copy is gone
        self.vocab_size = int(self._sp.get_piece_size())

        def valid(i: int) -> int | None:
            return i if i >= 0 else None

        found = {"bos": valid(self._sp.bos_id()), "eos": valid(self._sp.eos_id()), "pad": valid(self._sp.pad_id())}
        for key, piece in (configured or {}).items():  # tokens named by a directory's tokenizer_config.json
            piece_id = self._sp.piece_to_id(piece) if piece else self._sp.unk_id()
            if piece_id != self._sp.unk_id() or piece == self._sp.id_to_piece(self._sp.unk_id()):
                found[key] = piece_id
        self._resolve_special(found, overrides)

    def encode(self, text: str) -> list[int]:
        return list(self._sp.encode(text))

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [list(ids) for ids in self._sp.encode(list(texts))]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        ids = [int(i) for i in ids]
        if skip_special_tokens:
            ids = [i for i in ids if not (self._sp.is_control(i) or i in (self.bos_id, self.eos_id, self.pad_id))]
            return self._sp.decode(ids)
        # SentencePiece drops control pieces when decoding; spell them out so nothing is hidden.
        out, run = [], []
        for i in ids:
            if self._sp.is_control(i) or i in (self.bos_id, self.eos_id, self.pad_id):
                out.append(self._sp.decode(run))
                out.append(self._sp.id_to_piece(i))
                run = []
            else:
                run.append(i)
        out.append(self._sp.decode(run))
        return "".join(out)

    def token_name(self, token_id: int) -> str:
        return self._sp.id_to_piece(int(token_id))

    def save(self, directory: str | os.PathLike) -> None:
        directory = pathlib.Path(directory)
        config = {
            "tokenizer_class": "LlamaTokenizer",
            "bos_token": self.token_name(self.bos_id),
            "eos_token": self.token_name(self.eos_id),
            "pad_token": self.token_name(self.pad_id),
            "unk_token": self.token_name(max(self._sp.unk_id(), 0)),
            "add_bos_token": False,
            "add_eos_token": False,
            "legacy": False,
            "clean_up_tokenization_spaces": False,
            "model_max_length": 16384,
        }
        _write_dir_atomically(directory, {
            "tokenizer.model": self._model,
            "tokenizer_config.json": (json.dumps(config, indent=2, ensure_ascii=False) + "\n").encode(),
        })


def _special_from_added_tokens(backend) -> dict[str, int | None]:
    """Guess bos/eos/pad ids from the names of a bare tokenizer.json's special tokens."""
    vocab = backend.get_vocab(with_added_tokens=True)
    found: dict[str, int | None] = {}
    for key, names in (("bos", _BOS_NAMES), ("eos", _EOS_NAMES), ("pad", _PAD_NAMES)):
        found[key] = next((vocab[n] for n in names if n in vocab), None)
    return found


def _token_id(backend, token) -> int | None:
    if isinstance(token, dict):  # {"content": ..., "__type": "AddedToken"} in older configs
        token = token.get("content")
    if not token:
        return None
    return backend.token_to_id(token)


def _load_hf_dir(directory: pathlib.Path, overrides: dict[str, int | None]) -> Tokenizer:
    """An HF tokenizer directory: special tokens from its config, encoding by the Rust backend."""
    from tokenizers import Tokenizer as RustTokenizer

    config_file = directory / "tokenizer_config.json"
    config: dict = {}
    if config_file.is_file():
        try:
            config = json.loads(config_file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise TokenizerError(f"{config_file}: not valid JSON ({e})") from e
    special_map_file = directory / "special_tokens_map.json"
    if special_map_file.is_file():
        special_map = json.loads(special_map_file.read_text(encoding="utf-8"))
        for key in ("bos_token", "eos_token", "pad_token"):
            config.setdefault(key, special_map.get(key))
    json_file = directory / "tokenizer.json"
    if json_file.is_file():
        backend = RustTokenizer.from_file(str(json_file))
    elif (directory / "tokenizer.model").is_file():
        configured = {}
        for key in ("bos", "eos", "pad"):
            token = config.get(f"{key}_token")
            token = token.get("content") if isinstance(token, dict) else token
            if token:
                configured[key] = token
        return SentencePieceTokenizer(directory / "tokenizer.model", overrides, configured)
    else:
        return _load_via_transformers(directory, overrides)
    found = _special_from_added_tokens(backend)
    for key in ("bos", "eos", "pad"):
        configured = _token_id(backend, config.get(f"{key}_token"))
        if configured is not None:
            found[key] = configured
    return HFTokenizer(backend, str(directory), found, overrides, extra_config=config)


def _load_via_transformers(directory: pathlib.Path, overrides: dict[str, int | None]) -> Tokenizer:
    """Other HF layouts (e.g. vocab.json + merges.txt): let transformers build the fast tokenizer."""
    try:
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained(str(directory))
    except Exception as e:  # transformers raises OSError, ValueError, KeyError... for unusable dirs
        raise TokenizerError(f"{directory}: no tokenizer.json or tokenizer.model, and transformers cannot "
                             f"load it ({type(e).__name__}: {e})") from e
    backend = getattr(hf, "backend_tokenizer", None)
    if backend is None:
        raise TokenizerError(f"{directory}: only a slow (Python) tokenizer is available; save it as tokenizer.json")
    found = {"bos": hf.bos_token_id, "eos": hf.eos_token_id, "pad": hf.pad_token_id}
    return HFTokenizer(backend, str(directory), found, overrides)


def load_tokenizer(path: str | os.PathLike, *, bos_id: int | None = None, eos_id: int | None = None,
                   pad_id: int | None = None) -> Tokenizer:
    """Load an HF tokenizer directory, a ``tokenizer.json`` or a SentencePiece ``.model``.

    bos/eos/pad ids come from the tokenizer's config (or, for a bare ``tokenizer.json``, from the
    names of its special tokens); explicit ids override them; pad falls back to eos.
    """
    from tokenizers import Tokenizer as RustTokenizer

    if remote.is_remote(path):
        return _load_remote(str(path), bos_id=bos_id, eos_id=eos_id, pad_id=pad_id)
    overrides = {"bos": bos_id, "eos": eos_id, "pad": pad_id}
    p = pathlib.Path(path)
    if not p.exists():
        raise TokenizerError(f"{p}: tokenizer path does not exist")
    if p.is_dir():
        return _load_hf_dir(p, overrides)
    if p.suffix == ".model":
        return SentencePieceTokenizer(p, overrides)
    if p.suffix == ".json":
        if (p.parent / "tokenizer_config.json").is_file() and p.name == "tokenizer.json":
            return _load_hf_dir(p.parent, overrides)
        try:
            backend = RustTokenizer.from_file(str(p))
        except Exception as e:  # the Rust loader raises a bare Exception on malformed files
            raise TokenizerError(f"{p}: not a tokenizers JSON file ({e})") from e
        return HFTokenizer(backend, str(p), _special_from_added_tokens(backend), overrides)
    raise TokenizerError(f"{p}: expected a tokenizer directory, a tokenizer.json or a SentencePiece .model")


# Files of a model directory that are not the tokenizer: a gs:// tokenizer directory is downloaded without them.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".msgpack", ".h5", ".ckpt", ".gguf", ".npz", ".npy")


def _load_remote(url: str, **ids: int | None) -> Tokenizer:
    """A tokenizer on an object store: its files downloaded to a temporary directory (weights in the same
    directory are left out), loaded, and the directory removed; ``source`` names the URL."""
    found = remote.kind(url)
    if found is None:
        raise TokenizerError(f"{url}: tokenizer path does not exist")
    parent = url.rstrip("/").rsplit("/", 1)[0]
    if found == "file" and url.endswith("/tokenizer.json") and remote.kind(f"{parent}/tokenizer_config.json") == "file":
        url, found = parent, "directory"  # as locally: a tokenizer.json beside its config loads the directory
    with tempfile.TemporaryDirectory(prefix="semcoder-tokenizer-") as tmp:
        local = remote.download(url, tmp, want=lambda name, size: not name.endswith(_WEIGHT_SUFFIXES))
        try:
            tokenizer = load_tokenizer(local, **ids)
        except TokenizerError as e:  # name the URL, not the temporary copy
            raise TokenizerError(str(e).replace(local, url)) from None
    tokenizer.source = url
    return tokenizer
