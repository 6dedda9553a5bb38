"""Every string that crosses a process boundary.

Client and server import the same constant, so a typo fails at import time instead of being a
silently ignored setting.
"""

# --- Body service (grpcio side channel for per-batch split traffic) -------------------------------
# Service and method names: the full method path is f"/{BODY_SERVICE}/{BODY_FORWARD}".
BODY_SERVICE = "fedft.Body"
BODY_OPEN = "Open"
BODY_FORWARD = "Forward"
BODY_BACKWARD = "Backward"
BODY_CLOSE = "Close"

# gRPC metadata keys (lower case, as gRPC requires).
BODY_MD_TOKEN = "x-fedft-token"
BODY_MD_SESSION = "x-fedft-session"

# Fields of the JSON control payloads of Open (request and reply) and Close (reply).
BODY_OPEN_CLIENT = "client"
BODY_OPEN_ROUND = "round"
BODY_OPEN_PHASE = "phase"
BODY_OPEN_WIRE = "wire"
BODY_OPEN_T = "T"
BODY_OPEN_D = "D"
BODY_OPEN_MAX_BATCH = "max_batch"
BODY_OPEN_GRAD_WIRE = "grad_wire"  # optional: the gradients' wire format (default: the activations')
BODY_OPEN_FEEDBACK = "feedback"  # optional bool: error feedback on top-k gradient frames
BODY_OPEN_CUT = "cut"  # optional [head_blocks, tail_blocks]: the client's cut (heterogeneous split points)
BODY_OPEN_SESSION = "session"
BODY_OPEN_MODE = "mode"
BODY_OPEN_TTL = "ttl_s"
BODY_CLOSE_STEPS = "steps"

# --- Flower records (train messages and replies) -----------------------------------------------
ARRAYS = "arrays"  # ArrayRecord: global client-side state down, the client's update up
CONFIG = "config"  # ConfigRecord of the train message
METRICS = "metrics"  # MetricRecord of the reply
TIMELINE = "timeline"  # MetricRecord of the reply: the client's exchanges and FLOPs (time model; not counted as traffic)

# ConfigRecord keys of a train message.
SERVER_ROUND = "server-round"
RUN_CONFIG_TOML = "fedft-config"  # the resolved experiment config, TOML text
BODY_ADDRESS = "body-address"
BODY_TOKEN = "body-token"
BODY_ROOT_CERT = "body-root-cert"  # PEM bytes, when the body service runs with TLS
SIM_BODY_FLOPS = "sim-body-flops-per-token"  # server FLOPs per body position (a client's own deadline clock)

# MetricRecord keys of a reply.
NUM_EXAMPLES = "num-examples"
NUM_KEPT = "num-kept"
TRAIN_LOSS = "train-loss"
LOCAL_LOSS = "local-loss"
CLIENT_FLOPS = "client-flops"
CLIENT_SECONDS = "client-seconds"
SPLIT_SAMPLES = "split-samples"  # samples trained through the body
SPLIT_TOKENS = "split-tokens"  # sequence positions sent through the body (server FLOPs = these x per-token)
HEAD_BLOCKS = "head-blocks"  # split strategies: the client's cut, blocks in its head
TAIL_BLOCKS = "tail-blocks"  # and in its tail (the body service ran the rest)
CLIENT_BYTES_PREFIX = "bytes-"  # + ledger kind: the client's own count of body-service bytes
AGG_WEIGHT = "agg-weight"  # the strategy's weight of a reply, as Flower's aggregators read it

# Node config keys (simulation sets them; deployment passes them with --node-config).
PARTITION_ID = "partition-id"
NUM_PARTITIONS = "num-partitions"

# Custom action (query) used once before training to map node ids to partition ids.
QUERY_HELLO = "hello"
