"""openlora-node: one resident base model, many content-addressed LoRA adapters.

Packages: ``engine`` (base model, LoRA slots, continuous batching), ``adapters`` (PEFT format,
manifest, catalog), ``content`` (CIDs, UnixFS, blockstore), ``api`` (gRPC), ``v1`` (generated
stubs), ``client`` (Python SDK); ``cli`` and ``node`` wire them.
"""

__version__ = "0.1.0"
