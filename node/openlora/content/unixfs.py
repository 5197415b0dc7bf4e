"""UnixFS file nodes in dag-pb: encode them byte-for-byte as Kubo does, decode them strictly.

Specs: DAG-PB https://ipld.io/specs/codecs/dag-pb/spec/ and UnixFS
https://specs.ipfs.tech/unixfs/ . The protobuf classes are the ones py-libp2p ships
(``libp2p.bitswap.pb``); only the framing below is ours.

    PBNode  = PBLink* Data?                    Links (field 2) BEFORE Data (field 1): the DAG-PB
    PBLink  = Hash(1) Name(2) Tsize(3)         spec's canonical order, which protobuf's own
    Data    = UnixFS protobuf:                 serializer (field-number order) would not produce
              Type(1)=File  Data(2)?  filesize(3)  blocksizes(4)*   (proto2, blocksizes unpacked)

    leaf (CIDv0 only)   no links; Data = {File, Data=chunk, filesize=len(chunk)}
                        (an empty file: {File, filesize=0}, no Data field — as Go leaves it nil)
    internal node       one link per child: Hash = child CID bytes, Name = "", Tsize = serialized
                        size of the child's whole subtree; Data = {File, filesize=Σ, blocksizes=
                        [file bytes under each child]}
    raw leaf (CIDv1)    not dag-pb at all: the block is the chunk itself (codec raw 0x55)

Decoding checks what a reader relies on: UnixFS type File/Raw, one blocksize per link,
``filesize == len(Data) + Σ blocksizes``, and every link a raw/dag-pb sha2-256 CID.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from google.protobuf.message import DecodeError
from libp2p.bitswap.pb.dag_pb_pb2 import PBLink, PBNode
from libp2p.bitswap.pb.unixfs_pb2 import Data as UnixFSData
from multiformats import CID

from .cid import DAG_PB, RAW, check_supported, cid_text, parse_cid
from .errors import ContentError, InvalidDag


@dataclass(frozen=True)
class Link:
    """One child of an internal file node.

    Attributes:
        cid: the child's CID.
        tsize: bytes of the serialized subtree under the link (dag-pb ``Tsize``).
        filesize: bytes of file content under the link (the parent's UnixFS ``blocksizes`` entry).
    """

    cid: CID
    tsize: int
    filesize: int


@dataclass(frozen=True)
class FileNode:
    """A decoded block of a UnixFS file DAG.

    Attributes:
        data: file bytes held inline (a leaf's chunk; usually ``b""`` for internal nodes).
        links: children in file order; their content follows ``data``.
        filesize: total file bytes under this node (``len(data) + Σ link.filesize``).
    """

    data: bytes
    links: tuple[Link, ...]
    filesize: int


def encode_leaf(chunk: bytes) -> bytes:
    """A CIDv0-style leaf: a dag-pb node holding ``chunk`` in a UnixFS File ``Data``.

    Args:
        chunk: up to one chunk of file bytes (may be empty, for the empty file).

    Returns:
        The dag-pb block bytes.
    """
    unixfs = UnixFSData(Type=UnixFSData.File, filesize=len(chunk))
    if chunk:
        unixfs.Data = chunk
    return _frame([], unixfs.SerializeToString())


def encode_internal(children: Sequence[Link]) -> bytes:
    """An internal UnixFS File node linking ``children`` in order.

    Args:
        children: the child links (CID, subtree Tsize in bytes, file bytes under it).

    Returns:
        The dag-pb block bytes.
    """
    unixfs = UnixFSData(
        Type=UnixFSData.File,
        filesize=sum(c.filesize for c in children),
        blocksizes=[c.filesize for c in children],
    )
    links = [PBLink(Hash=bytes(c.cid), Name="", Tsize=c.tsize) for c in children]
    return _frame(links, unixfs.SerializeToString())


def _frame(links: list[PBLink], data: bytes) -> bytes:
    # Protobuf messages concatenate: serializing the Links and the Data as two messages and
    # joining them gives one PBNode with the fields in the spec's order (Links first).
    return PBNode(Links=links).SerializeToString() + PBNode(Data=data).SerializeToString()


def decode_file_node(cid: CID, block: bytes) -> FileNode:
    """Decode a (hash-verified) block of a UnixFS file DAG.

    Args:
        cid: the block's CID; its codec says how to read the bytes.
        block: the block bytes.

    Returns:
        The node: a raw block is a leaf whose data is the whole block.

    Raises:
        InvalidDag: the dag-pb/UnixFS encoding is malformed, the node is not a file (e.g. a
            directory), sizes do not add up, or a link is not a raw/dag-pb sha2-256 CID.
    """
    if cid.codec.code == RAW:
        return FileNode(data=block, links=(), filesize=len(block))

    def bad(problem: str) -> InvalidDag:
        # CID text costs ~0.3 ms with multiformats: only build it for the error.
        name = cid_text(cid)
        return InvalidDag(f"block {name} {problem}", cid=name)

    if cid.codec.code != DAG_PB:
        raise bad(f"has codec {cid.codec.name}, not raw or dag-pb")
    node, unixfs = PBNode(), UnixFSData()
    try:
        node.ParseFromString(block)
        if not node.HasField("Data"):
            raise bad("is a dag-pb node without UnixFS Data: not a UnixFS file")
        unixfs.ParseFromString(node.Data)
    except DecodeError as exc:
        raise bad(f"is not a valid dag-pb/UnixFS node: {exc}") from exc
    if unixfs.Type not in (UnixFSData.File, UnixFSData.Raw):
        raise bad(f"is a UnixFS {UnixFSData.DataType.Name(unixfs.Type)}, not a file")
    if len(unixfs.blocksizes) != len(node.Links):
        raise bad(f"has {len(node.Links)} links but {len(unixfs.blocksizes)} blocksizes")
    links = tuple(
        Link(cid=_link_cid(cid, pb.Hash), tsize=pb.Tsize, filesize=size)
        for pb, size in zip(node.Links, unixfs.blocksizes, strict=True)
    )
    expected = len(unixfs.Data) + sum(unixfs.blocksizes)
    if unixfs.HasField("filesize") and unixfs.filesize != expected:
        raise bad(
            f"declares filesize {unixfs.filesize} but holds {len(unixfs.Data)} bytes plus "
            f"children of {sum(unixfs.blocksizes)} bytes"
        )
    return FileNode(data=unixfs.Data, links=links, filesize=expected)


def _link_cid(parent: CID, raw: bytes) -> CID:
    try:
        child = parse_cid(raw)
        check_supported(child)
    except ContentError as exc:
        name = cid_text(parent)
        raise InvalidDag(f"block {name} links to an unusable CID: {exc}", cid=name) from exc
    return child
