"""The workers' string hashing is fixed by ``hash_seed``, so set order of strings is a function of it."""

from __future__ import annotations

from sandbox import Job, Sandbox

PROGRAM = "emit(hash('semcoder'))"


def _hash_under(seed: int | None) -> int:
    with Sandbox(workers=1, hash_seed=seed) as sb:
        return sb.run(Job(PROGRAM)).values[0]


def test_the_same_hash_seed_gives_the_same_string_hashes_and_another_seed_others():
    first, again, other = _hash_under(0), _hash_under(0), _hash_under(1)
    assert first == again
    assert first != other
