from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FinishReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FINISH_REASON_UNSPECIFIED: _ClassVar[FinishReason]
    FINISH_REASON_STOP: _ClassVar[FinishReason]
    FINISH_REASON_LENGTH: _ClassVar[FinishReason]
    FINISH_REASON_CANCELLED: _ClassVar[FinishReason]

class AdapterStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ADAPTER_STATUS_UNKNOWN: _ClassVar[AdapterStatus]
    ADAPTER_STATUS_FETCHING: _ClassVar[AdapterStatus]
    ADAPTER_STATUS_VERIFYING: _ClassVar[AdapterStatus]
    ADAPTER_STATUS_READY: _ClassVar[AdapterStatus]
    ADAPTER_STATUS_RESIDENT: _ClassVar[AdapterStatus]
    ADAPTER_STATUS_REJECTED: _ClassVar[AdapterStatus]
    ADAPTER_STATUS_AVAILABLE: _ClassVar[AdapterStatus]
FINISH_REASON_UNSPECIFIED: FinishReason
FINISH_REASON_STOP: FinishReason
FINISH_REASON_LENGTH: FinishReason
FINISH_REASON_CANCELLED: FinishReason
ADAPTER_STATUS_UNKNOWN: AdapterStatus
ADAPTER_STATUS_FETCHING: AdapterStatus
ADAPTER_STATUS_VERIFYING: AdapterStatus
ADAPTER_STATUS_READY: AdapterStatus
ADAPTER_STATUS_RESIDENT: AdapterStatus
ADAPTER_STATUS_REJECTED: AdapterStatus
ADAPTER_STATUS_AVAILABLE: AdapterStatus

class ChatMessage(_message.Message):
    __slots__ = ("role", "content")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: str
    def __init__(self, role: _Optional[str] = ..., content: _Optional[str] = ...) -> None: ...

class ChatMessages(_message.Message):
    __slots__ = ("messages",)
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[ChatMessage]
    def __init__(self, messages: _Optional[_Iterable[_Union[ChatMessage, _Mapping]]] = ...) -> None: ...

class SamplingParams(_message.Message):
    __slots__ = ("max_new_tokens", "temperature", "top_p", "top_k", "seed", "stop")
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    max_new_tokens: int
    temperature: float
    top_p: float
    top_k: int
    seed: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, max_new_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., top_k: _Optional[int] = ..., seed: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("adapter", "prompt", "chat", "sampling", "voucher", "response_format", "adapters")
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    CHAT_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    VOUCHER_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FORMAT_FIELD_NUMBER: _ClassVar[int]
    ADAPTERS_FIELD_NUMBER: _ClassVar[int]
    adapter: str
    prompt: str
    chat: ChatMessages
    sampling: SamplingParams
    voucher: Voucher
    response_format: ResponseFormat
    adapters: _containers.RepeatedCompositeFieldContainer[AdapterPart]
    def __init__(self, adapter: _Optional[str] = ..., prompt: _Optional[str] = ..., chat: _Optional[_Union[ChatMessages, _Mapping]] = ..., sampling: _Optional[_Union[SamplingParams, _Mapping]] = ..., voucher: _Optional[_Union[Voucher, _Mapping]] = ..., response_format: _Optional[_Union[ResponseFormat, _Mapping]] = ..., adapters: _Optional[_Iterable[_Union[AdapterPart, _Mapping]]] = ...) -> None: ...

class ResponseFormat(_message.Message):
    __slots__ = ("json_schema", "json_object", "regex")
    JSON_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    JSON_OBJECT_FIELD_NUMBER: _ClassVar[int]
    REGEX_FIELD_NUMBER: _ClassVar[int]
    json_schema: str
    json_object: bool
    regex: str
    def __init__(self, json_schema: _Optional[str] = ..., json_object: _Optional[bool] = ..., regex: _Optional[str] = ...) -> None: ...

class AdapterPart(_message.Message):
    __slots__ = ("cid", "weight", "voucher")
    CID_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    VOUCHER_FIELD_NUMBER: _ClassVar[int]
    cid: str
    weight: float
    voucher: Voucher
    def __init__(self, cid: _Optional[str] = ..., weight: _Optional[float] = ..., voucher: _Optional[_Union[Voucher, _Mapping]] = ...) -> None: ...

class Voucher(_message.Message):
    __slots__ = ("client", "node", "epoch", "cumulative_amount", "signature", "adapter_id", "price_per_1k_tokens", "adapter_amount")
    CLIENT_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    CUMULATIVE_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_ID_FIELD_NUMBER: _ClassVar[int]
    PRICE_PER_1K_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    client: str
    node: str
    epoch: int
    cumulative_amount: str
    signature: bytes
    adapter_id: bytes
    price_per_1k_tokens: str
    adapter_amount: str
    def __init__(self, client: _Optional[str] = ..., node: _Optional[str] = ..., epoch: _Optional[int] = ..., cumulative_amount: _Optional[str] = ..., signature: _Optional[bytes] = ..., adapter_id: _Optional[bytes] = ..., price_per_1k_tokens: _Optional[str] = ..., adapter_amount: _Optional[str] = ...) -> None: ...

class Receipt(_message.Message):
    __slots__ = ("node", "client", "epoch", "sequence", "adapter_id", "publisher", "tokens", "cost", "charged_total", "signature", "serving")
    NODE_FIELD_NUMBER: _ClassVar[int]
    CLIENT_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_ID_FIELD_NUMBER: _ClassVar[int]
    PUBLISHER_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    CHARGED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    SERVING_FIELD_NUMBER: _ClassVar[int]
    node: str
    client: str
    epoch: int
    sequence: int
    adapter_id: bytes
    publisher: str
    tokens: int
    cost: str
    charged_total: str
    signature: bytes
    serving: bytes
    def __init__(self, node: _Optional[str] = ..., client: _Optional[str] = ..., epoch: _Optional[int] = ..., sequence: _Optional[int] = ..., adapter_id: _Optional[bytes] = ..., publisher: _Optional[str] = ..., tokens: _Optional[int] = ..., cost: _Optional[str] = ..., charged_total: _Optional[str] = ..., signature: _Optional[bytes] = ..., serving: _Optional[bytes] = ...) -> None: ...

class ServingRecord(_message.Message):
    __slots__ = ("node", "base_fingerprint", "adapter", "prompt_hash", "completion_hash", "prompt_tokens", "completion_tokens", "max_new_tokens", "temperature", "top_p", "top_k", "seed", "stop", "engine", "proof", "signature", "constraint")
    NODE_FIELD_NUMBER: _ClassVar[int]
    BASE_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    PROMPT_HASH_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_HASH_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    PROOF_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    CONSTRAINT_FIELD_NUMBER: _ClassVar[int]
    node: str
    base_fingerprint: str
    adapter: str
    prompt_hash: bytes
    completion_hash: bytes
    prompt_tokens: int
    completion_tokens: int
    max_new_tokens: int
    temperature: float
    top_p: float
    top_k: int
    seed: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    engine: str
    proof: bytes
    signature: bytes
    constraint: str
    def __init__(self, node: _Optional[str] = ..., base_fingerprint: _Optional[str] = ..., adapter: _Optional[str] = ..., prompt_hash: _Optional[bytes] = ..., completion_hash: _Optional[bytes] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., max_new_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., top_k: _Optional[int] = ..., seed: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ..., engine: _Optional[str] = ..., proof: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., constraint: _Optional[str] = ...) -> None: ...

class ServedCall(_message.Message):
    __slots__ = ("record", "prompt_ids", "completion_ids", "receipt")
    RECORD_FIELD_NUMBER: _ClassVar[int]
    PROMPT_IDS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_IDS_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_FIELD_NUMBER: _ClassVar[int]
    record: ServingRecord
    prompt_ids: _containers.RepeatedScalarFieldContainer[int]
    completion_ids: _containers.RepeatedScalarFieldContainer[int]
    receipt: Receipt
    def __init__(self, record: _Optional[_Union[ServingRecord, _Mapping]] = ..., prompt_ids: _Optional[_Iterable[int]] = ..., completion_ids: _Optional[_Iterable[int]] = ..., receipt: _Optional[_Union[Receipt, _Mapping]] = ...) -> None: ...

class Evidence(_message.Message):
    __slots__ = ("call", "check", "detail", "verifier", "issued_at", "signature")
    CALL_FIELD_NUMBER: _ClassVar[int]
    CHECK_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    VERIFIER_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    call: ServedCall
    check: str
    detail: str
    verifier: str
    issued_at: int
    signature: bytes
    def __init__(self, call: _Optional[_Union[ServedCall, _Mapping]] = ..., check: _Optional[str] = ..., detail: _Optional[str] = ..., verifier: _Optional[str] = ..., issued_at: _Optional[int] = ..., signature: _Optional[bytes] = ...) -> None: ...

class VerifyRequest(_message.Message):
    __slots__ = ("call",)
    CALL_FIELD_NUMBER: _ClassVar[int]
    call: ServedCall
    def __init__(self, call: _Optional[_Union[ServedCall, _Mapping]] = ...) -> None: ...

class VerifyResponse(_message.Message):
    __slots__ = ("valid", "check", "detail", "commitment_distance", "probe_noise", "commitment_ratio", "ratio_limit", "sampling_z", "greedy_misses", "verify_ms", "evidence", "adapter_projection", "projection_z", "adapter_effect")
    VALID_FIELD_NUMBER: _ClassVar[int]
    CHECK_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    COMMITMENT_DISTANCE_FIELD_NUMBER: _ClassVar[int]
    PROBE_NOISE_FIELD_NUMBER: _ClassVar[int]
    COMMITMENT_RATIO_FIELD_NUMBER: _ClassVar[int]
    RATIO_LIMIT_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_Z_FIELD_NUMBER: _ClassVar[int]
    GREEDY_MISSES_FIELD_NUMBER: _ClassVar[int]
    VERIFY_MS_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_PROJECTION_FIELD_NUMBER: _ClassVar[int]
    PROJECTION_Z_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_EFFECT_FIELD_NUMBER: _ClassVar[int]
    valid: bool
    check: str
    detail: str
    commitment_distance: float
    probe_noise: float
    commitment_ratio: float
    ratio_limit: float
    sampling_z: float
    greedy_misses: int
    verify_ms: float
    evidence: Evidence
    adapter_projection: float
    projection_z: float
    adapter_effect: float
    def __init__(self, valid: _Optional[bool] = ..., check: _Optional[str] = ..., detail: _Optional[str] = ..., commitment_distance: _Optional[float] = ..., probe_noise: _Optional[float] = ..., commitment_ratio: _Optional[float] = ..., ratio_limit: _Optional[float] = ..., sampling_z: _Optional[float] = ..., greedy_misses: _Optional[int] = ..., verify_ms: _Optional[float] = ..., evidence: _Optional[_Union[Evidence, _Mapping]] = ..., adapter_projection: _Optional[float] = ..., projection_z: _Optional[float] = ..., adapter_effect: _Optional[float] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("prompt_tokens", "completion_tokens")
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    prompt_tokens: int
    completion_tokens: int
    def __init__(self, prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ...) -> None: ...

class GenerateDone(_message.Message):
    __slots__ = ("usage", "finish_reason", "adapter", "ttft_ms", "receipt", "record", "prompt_ids", "completion_ids", "part_receipts")
    USAGE_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    TTFT_MS_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_FIELD_NUMBER: _ClassVar[int]
    RECORD_FIELD_NUMBER: _ClassVar[int]
    PROMPT_IDS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_IDS_FIELD_NUMBER: _ClassVar[int]
    PART_RECEIPTS_FIELD_NUMBER: _ClassVar[int]
    usage: Usage
    finish_reason: FinishReason
    adapter: str
    ttft_ms: float
    receipt: Receipt
    record: ServingRecord
    prompt_ids: _containers.RepeatedScalarFieldContainer[int]
    completion_ids: _containers.RepeatedScalarFieldContainer[int]
    part_receipts: _containers.RepeatedCompositeFieldContainer[Receipt]
    def __init__(self, usage: _Optional[_Union[Usage, _Mapping]] = ..., finish_reason: _Optional[_Union[FinishReason, str]] = ..., adapter: _Optional[str] = ..., ttft_ms: _Optional[float] = ..., receipt: _Optional[_Union[Receipt, _Mapping]] = ..., record: _Optional[_Union[ServingRecord, _Mapping]] = ..., prompt_ids: _Optional[_Iterable[int]] = ..., completion_ids: _Optional[_Iterable[int]] = ..., part_receipts: _Optional[_Iterable[_Union[Receipt, _Mapping]]] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("text", "done")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    text: str
    done: GenerateDone
    def __init__(self, text: _Optional[str] = ..., done: _Optional[_Union[GenerateDone, _Mapping]] = ...) -> None: ...

class PublishHeader(_message.Message):
    __slots__ = ("name", "manifest")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    name: str
    manifest: bytes
    def __init__(self, name: _Optional[str] = ..., manifest: _Optional[bytes] = ...) -> None: ...

class FileChunk(_message.Message):
    __slots__ = ("path", "data")
    PATH_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    path: str
    data: bytes
    def __init__(self, path: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class PublishAdapterRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: PublishHeader
    chunk: FileChunk
    def __init__(self, header: _Optional[_Union[PublishHeader, _Mapping]] = ..., chunk: _Optional[_Union[FileChunk, _Mapping]] = ...) -> None: ...

class PublishAdapterResponse(_message.Message):
    __slots__ = ("cid", "adapter")
    CID_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    cid: str
    adapter: AdapterInfo
    def __init__(self, cid: _Optional[str] = ..., adapter: _Optional[_Union[AdapterInfo, _Mapping]] = ...) -> None: ...

class GetAdapterRequest(_message.Message):
    __slots__ = ("cid",)
    CID_FIELD_NUMBER: _ClassVar[int]
    cid: str
    def __init__(self, cid: _Optional[str] = ...) -> None: ...

class AdapterFile(_message.Message):
    __slots__ = ("name", "cid", "size")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CID_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    name: str
    cid: str
    size: int
    def __init__(self, name: _Optional[str] = ..., cid: _Optional[str] = ..., size: _Optional[int] = ...) -> None: ...

class AdapterInfo(_message.Message):
    __slots__ = ("cid", "status", "reason", "detail", "name", "base_model", "base_fingerprint", "r", "lora_alpha", "target_modules", "files", "manifest_json", "publisher", "price_per_1k_tokens", "royalty_bps", "created_at", "retryable")
    CID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    BASE_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    R_FIELD_NUMBER: _ClassVar[int]
    LORA_ALPHA_FIELD_NUMBER: _ClassVar[int]
    TARGET_MODULES_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_JSON_FIELD_NUMBER: _ClassVar[int]
    PUBLISHER_FIELD_NUMBER: _ClassVar[int]
    PRICE_PER_1K_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ROYALTY_BPS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    RETRYABLE_FIELD_NUMBER: _ClassVar[int]
    cid: str
    status: AdapterStatus
    reason: str
    detail: str
    name: str
    base_model: str
    base_fingerprint: str
    r: int
    lora_alpha: float
    target_modules: _containers.RepeatedScalarFieldContainer[str]
    files: _containers.RepeatedCompositeFieldContainer[AdapterFile]
    manifest_json: str
    publisher: str
    price_per_1k_tokens: str
    royalty_bps: int
    created_at: int
    retryable: bool
    def __init__(self, cid: _Optional[str] = ..., status: _Optional[_Union[AdapterStatus, str]] = ..., reason: _Optional[str] = ..., detail: _Optional[str] = ..., name: _Optional[str] = ..., base_model: _Optional[str] = ..., base_fingerprint: _Optional[str] = ..., r: _Optional[int] = ..., lora_alpha: _Optional[float] = ..., target_modules: _Optional[_Iterable[str]] = ..., files: _Optional[_Iterable[_Union[AdapterFile, _Mapping]]] = ..., manifest_json: _Optional[str] = ..., publisher: _Optional[str] = ..., price_per_1k_tokens: _Optional[str] = ..., royalty_bps: _Optional[int] = ..., created_at: _Optional[int] = ..., retryable: _Optional[bool] = ...) -> None: ...

class ListAdaptersRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListAdaptersResponse(_message.Message):
    __slots__ = ("adapters", "next_page_token")
    ADAPTERS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    adapters: _containers.RepeatedCompositeFieldContainer[AdapterInfo]
    next_page_token: str
    def __init__(self, adapters: _Optional[_Iterable[_Union[AdapterInfo, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetNodeInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SlotInfo(_message.Message):
    __slots__ = ("capacity", "resident", "host_cached", "max_rank")
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    RESIDENT_FIELD_NUMBER: _ClassVar[int]
    HOST_CACHED_FIELD_NUMBER: _ClassVar[int]
    MAX_RANK_FIELD_NUMBER: _ClassVar[int]
    capacity: int
    resident: _containers.RepeatedScalarFieldContainer[str]
    host_cached: int
    max_rank: int
    def __init__(self, capacity: _Optional[int] = ..., resident: _Optional[_Iterable[str]] = ..., host_cached: _Optional[int] = ..., max_rank: _Optional[int] = ...) -> None: ...

class NodeInfo(_message.Message):
    __slots__ = ("version", "base_model", "base_fingerprint", "dtype", "device", "slots", "running", "waiting", "adapters_known", "chain", "p2p", "engine", "features")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    BASE_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    ADAPTERS_KNOWN_FIELD_NUMBER: _ClassVar[int]
    CHAIN_FIELD_NUMBER: _ClassVar[int]
    P2P_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    version: str
    base_model: str
    base_fingerprint: str
    dtype: str
    device: str
    slots: SlotInfo
    running: int
    waiting: int
    adapters_known: int
    chain: ChainInfo
    p2p: P2PInfo
    engine: str
    features: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, version: _Optional[str] = ..., base_model: _Optional[str] = ..., base_fingerprint: _Optional[str] = ..., dtype: _Optional[str] = ..., device: _Optional[str] = ..., slots: _Optional[_Union[SlotInfo, _Mapping]] = ..., running: _Optional[int] = ..., waiting: _Optional[int] = ..., adapters_known: _Optional[int] = ..., chain: _Optional[_Union[ChainInfo, _Mapping]] = ..., p2p: _Optional[_Union[P2PInfo, _Mapping]] = ..., engine: _Optional[str] = ..., features: _Optional[_Iterable[str]] = ...) -> None: ...

class P2PInfo(_message.Message):
    __slots__ = ("peer_id", "multiaddr", "peers", "nodes_known", "dht_mode", "dht_routing_peers", "dht_providing", "relay_service", "relay_reservations", "relay_circuits", "reached_through")
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    MULTIADDR_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    NODES_KNOWN_FIELD_NUMBER: _ClassVar[int]
    DHT_MODE_FIELD_NUMBER: _ClassVar[int]
    DHT_ROUTING_PEERS_FIELD_NUMBER: _ClassVar[int]
    DHT_PROVIDING_FIELD_NUMBER: _ClassVar[int]
    RELAY_SERVICE_FIELD_NUMBER: _ClassVar[int]
    RELAY_RESERVATIONS_FIELD_NUMBER: _ClassVar[int]
    RELAY_CIRCUITS_FIELD_NUMBER: _ClassVar[int]
    REACHED_THROUGH_FIELD_NUMBER: _ClassVar[int]
    peer_id: str
    multiaddr: str
    peers: int
    nodes_known: int
    dht_mode: str
    dht_routing_peers: int
    dht_providing: int
    relay_service: bool
    relay_reservations: int
    relay_circuits: int
    reached_through: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, peer_id: _Optional[str] = ..., multiaddr: _Optional[str] = ..., peers: _Optional[int] = ..., nodes_known: _Optional[int] = ..., dht_mode: _Optional[str] = ..., dht_routing_peers: _Optional[int] = ..., dht_providing: _Optional[int] = ..., relay_service: _Optional[bool] = ..., relay_reservations: _Optional[int] = ..., relay_circuits: _Optional[int] = ..., reached_through: _Optional[_Iterable[str]] = ...) -> None: ...

class ChainInfo(_message.Message):
    __slots__ = ("chain_id", "rpc_url", "registry", "channels", "node_address", "node_fee_per_1k", "embedded", "withdraw_timeout_s")
    CHAIN_ID_FIELD_NUMBER: _ClassVar[int]
    RPC_URL_FIELD_NUMBER: _ClassVar[int]
    REGISTRY_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    NODE_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    NODE_FEE_PER_1K_FIELD_NUMBER: _ClassVar[int]
    EMBEDDED_FIELD_NUMBER: _ClassVar[int]
    WITHDRAW_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    chain_id: int
    rpc_url: str
    registry: str
    channels: str
    node_address: str
    node_fee_per_1k: str
    embedded: bool
    withdraw_timeout_s: int
    def __init__(self, chain_id: _Optional[int] = ..., rpc_url: _Optional[str] = ..., registry: _Optional[str] = ..., channels: _Optional[str] = ..., node_address: _Optional[str] = ..., node_fee_per_1k: _Optional[str] = ..., embedded: _Optional[bool] = ..., withdraw_timeout_s: _Optional[int] = ...) -> None: ...

class GetQuoteRequest(_message.Message):
    __slots__ = ("adapter", "prompt", "chat", "max_new_tokens", "client", "issued_at", "client_signature")
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    CHAT_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CLIENT_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_FIELD_NUMBER: _ClassVar[int]
    CLIENT_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    adapter: str
    prompt: str
    chat: ChatMessages
    max_new_tokens: int
    client: str
    issued_at: int
    client_signature: bytes
    def __init__(self, adapter: _Optional[str] = ..., prompt: _Optional[str] = ..., chat: _Optional[_Union[ChatMessages, _Mapping]] = ..., max_new_tokens: _Optional[int] = ..., client: _Optional[str] = ..., issued_at: _Optional[int] = ..., client_signature: _Optional[bytes] = ...) -> None: ...

class ChannelState(_message.Message):
    __slots__ = ("epoch", "deposited", "redeemed", "withdraw_at", "latest_voucher", "charged_total", "committed", "adapter_voucher", "adapter_charged")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    DEPOSITED_FIELD_NUMBER: _ClassVar[int]
    REDEEMED_FIELD_NUMBER: _ClassVar[int]
    WITHDRAW_AT_FIELD_NUMBER: _ClassVar[int]
    LATEST_VOUCHER_FIELD_NUMBER: _ClassVar[int]
    CHARGED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_VOUCHER_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_CHARGED_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    deposited: str
    redeemed: str
    withdraw_at: int
    latest_voucher: Voucher
    charged_total: str
    committed: str
    adapter_voucher: Voucher
    adapter_charged: str
    def __init__(self, epoch: _Optional[int] = ..., deposited: _Optional[str] = ..., redeemed: _Optional[str] = ..., withdraw_at: _Optional[int] = ..., latest_voucher: _Optional[_Union[Voucher, _Mapping]] = ..., charged_total: _Optional[str] = ..., committed: _Optional[str] = ..., adapter_voucher: _Optional[_Union[Voucher, _Mapping]] = ..., adapter_charged: _Optional[str] = ...) -> None: ...

class Quote(_message.Message):
    __slots__ = ("payment_required", "adapter", "prompt_tokens", "max_new_tokens", "price_per_1k_tokens", "publisher_price_per_1k", "node_fee_per_1k", "max_cost_wei", "publisher", "royalty_bps", "node_address", "chain_id", "channels", "channel", "parts")
    PAYMENT_REQUIRED_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PRICE_PER_1K_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PUBLISHER_PRICE_PER_1K_FIELD_NUMBER: _ClassVar[int]
    NODE_FEE_PER_1K_FIELD_NUMBER: _ClassVar[int]
    MAX_COST_WEI_FIELD_NUMBER: _ClassVar[int]
    PUBLISHER_FIELD_NUMBER: _ClassVar[int]
    ROYALTY_BPS_FIELD_NUMBER: _ClassVar[int]
    NODE_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    CHAIN_ID_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    PARTS_FIELD_NUMBER: _ClassVar[int]
    payment_required: bool
    adapter: str
    prompt_tokens: int
    max_new_tokens: int
    price_per_1k_tokens: str
    publisher_price_per_1k: str
    node_fee_per_1k: str
    max_cost_wei: str
    publisher: str
    royalty_bps: int
    node_address: str
    chain_id: int
    channels: str
    channel: ChannelState
    parts: _containers.RepeatedCompositeFieldContainer[Quote]
    def __init__(self, payment_required: _Optional[bool] = ..., adapter: _Optional[str] = ..., prompt_tokens: _Optional[int] = ..., max_new_tokens: _Optional[int] = ..., price_per_1k_tokens: _Optional[str] = ..., publisher_price_per_1k: _Optional[str] = ..., node_fee_per_1k: _Optional[str] = ..., max_cost_wei: _Optional[str] = ..., publisher: _Optional[str] = ..., royalty_bps: _Optional[int] = ..., node_address: _Optional[str] = ..., chain_id: _Optional[int] = ..., channels: _Optional[str] = ..., channel: _Optional[_Union[ChannelState, _Mapping]] = ..., parts: _Optional[_Iterable[_Union[Quote, _Mapping]]] = ...) -> None: ...

class GetUsageRequest(_message.Message):
    __slots__ = ("adapter",)
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    adapter: str
    def __init__(self, adapter: _Optional[str] = ...) -> None: ...

class AdapterUsage(_message.Message):
    __slots__ = ("adapter", "calls", "tokens", "amount_wei", "publisher_earnings_wei", "publisher")
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_WEI_FIELD_NUMBER: _ClassVar[int]
    PUBLISHER_EARNINGS_WEI_FIELD_NUMBER: _ClassVar[int]
    PUBLISHER_FIELD_NUMBER: _ClassVar[int]
    adapter: str
    calls: int
    tokens: int
    amount_wei: str
    publisher_earnings_wei: str
    publisher: str
    def __init__(self, adapter: _Optional[str] = ..., calls: _Optional[int] = ..., tokens: _Optional[int] = ..., amount_wei: _Optional[str] = ..., publisher_earnings_wei: _Optional[str] = ..., publisher: _Optional[str] = ...) -> None: ...

class GetUsageResponse(_message.Message):
    __slots__ = ("adapters",)
    ADAPTERS_FIELD_NUMBER: _ClassVar[int]
    adapters: _containers.RepeatedCompositeFieldContainer[AdapterUsage]
    def __init__(self, adapters: _Optional[_Iterable[_Union[AdapterUsage, _Mapping]]] = ...) -> None: ...
