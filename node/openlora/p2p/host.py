"""Building the libp2p host: TCP on one address, Noise, Yamux, nothing that reaches out by itself.

new_host(key_pair=secp256k1, listen /ip4/<host>/tcp/<port>)
  security  /noise only         (py-libp2p also offers TLS, SECIO and PLAINTEXT by default;
                                 plaintext would let a peer claim any peer ID)
  muxer     /yamux/1.0.0        (what Kubo and go/js/rust-libp2p speak)
  no mDNS, no UPnP, no bootstrap list, no public DHT: the swarm dials the multiaddrs the
  operator gives it and the peers its own swarm names (gossip, catalogs, its DHT under
  /openlora/kad/1.0.0, relay circuits); py-libp2p's connection manager redials known peers
  ConnectionConfig(max_connections_per_peer=1): with the default of 3 every connect
  waits ~250 ms for extra connections; between LOW_WATER and HIGH_WATER connections in all
py-libp2p listens with SO_REUSEPORT (for hole punching), so binding a port another
process holds "succeeds" and the kernel splits incoming connections between the two:
``check_port_free`` refuses that before the host starts.
"""

from __future__ import annotations

import errno
import os
import socket

import multiaddr
from libp2p import new_host
from libp2p.abc import IHost
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.network.config import MAX_CONNECTIONS, ConnectionConfig
from libp2p.peer.peerinfo import InvalidAddrError, PeerInfo, info_from_p2p_addr
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from multiaddr.exceptions import Error as MultiaddrError

from .errors import InvalidMultiaddr, SwarmStartError


def listen_multiaddr(host: str, port: int) -> multiaddr.Multiaddr:
    """``/ip4/<host>/tcp/<port>`` (port 0 = any free port).

    Raises:
        InvalidMultiaddr: ``host`` is not an IPv4 address or ``port`` is outside 0..65535.
    """
    if not 0 <= port <= 65535:
        raise InvalidMultiaddr(f"p2p port must be 0..65535, got {port}")
    try:
        return multiaddr.Multiaddr(f"/ip4/{host}/tcp/{port}")
    except (MultiaddrError, ValueError) as e:
        raise InvalidMultiaddr(
            f"p2p listen host must be an IPv4 address such as 127.0.0.1, got {host!r}: {e}"
        ) from None


def check_port_free(host: str, port: int) -> None:
    """Refuse a fixed port that something else already listens on (port 0 is always free).

    Raises:
        SwarmStartError: the port is in use.
    """
    if port == 0:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))  # no SO_REUSEPORT: fails if anyone holds the port
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                raise
            raise SwarmStartError(
                f"p2p port {port} on {host} is already in use; pick another --p2p-port (0 picks a free one)"
            ) from None


#: py-libp2p's yamux answers every read with a WINDOW_UPDATE frame (its PY_YAMUX_RELEASE_ON_READ default); off,
#: it grows windows as go-yamux does, once half a window was consumed. Every GossipSub RPC then costs one frame,
#: not two (20 idle peers at 4/8 connections on this 2-core box, py-spy on one, one run each: 0.88 cores with the
#: default, 0.63 without). Set before the first stream reads it; an operator's own setting wins.
YAMUX_TUNING = {"PY_YAMUX_RELEASE_ON_READ": "0"}

#: connections py-libp2p's connection manager keeps: it dials known peers up to midway between the two and
#: prunes above the high one. Kubo's ConnMgr defaults (LowWater 32, HighWater 96); py-libp2p's own (100 / 300)
#: connect a swarm of a few dozen nodes into a full mesh, which costs every node work per peer in the swarm.
LOW_WATER, HIGH_WATER = 32, 96


def build_host(
    key_pair: KeyPair, listen: multiaddr.Multiaddr, low_water: int = LOW_WATER, high_water: int = HIGH_WATER
) -> IHost:
    """A libp2p host for ``key_pair`` that will listen on ``listen`` (see the module docstring), keeping between
    ``low_water`` and ``high_water`` connections (``LOW_WATER``).

    Start it with ``async with host.run([listen])``.

    Raises:
        ValueError: ``low_water`` above ``high_water``, or negative.
    """
    for name, value in YAMUX_TUNING.items():
        os.environ.setdefault(name, value)
    noise = NoiseTransport(key_pair, noise_privkey=create_x25519_key_pair().private_key)
    return new_host(
        key_pair=key_pair,
        sec_opt={NOISE_PROTOCOL_ID: noise},
        muxer_preference="YAMUX",
        listen_addrs=[listen],
        enable_mDNS=False,
        enable_upnp=False,
        bootstrap=None,
        connection_config=ConnectionConfig(
            max_connections_per_peer=1, min_connections=low_water, low_watermark=low_water,
            high_watermark=high_water, max_connections=max(high_water, MAX_CONNECTIONS),
        ),  # fmt: skip
    )


def parse_peer_multiaddr(text: str) -> PeerInfo:
    """The peer ID and dial address of a full multiaddr ``/ip4/…/tcp/N/p2p/PEERID``.

    Raises:
        InvalidMultiaddr: the text does not parse or does not end in ``/p2p/PEERID``.
    """
    try:
        return info_from_p2p_addr(multiaddr.Multiaddr(text))
    except (MultiaddrError, InvalidAddrError, ValueError) as e:
        raise InvalidMultiaddr(
            f"bad peer multiaddr {text!r} ({e}); expected /ip4/<ip>/tcp/<port>/p2p/<peer id>, "
            f"as a node prints in its ready line"
        ) from None
