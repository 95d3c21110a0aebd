"""Every limit and network constant, with its unit and why (the one module that owns them).

Modules import these names; tests may override the tunables on the objects that copy them.
Bitcoin Core's equivalent is given where there is one.
"""

from __future__ import annotations

# --- protocol -----------------------------------------------------------------------------
PROTOCOL_VERSION = 2  # bumped on any wire change; 2: HELLO names relay features (Bitcoin: PROTOCOL_VERSION)
MIN_PROTOCOL_VERSION = 1  # oldest version we still talk to
USER_AGENT_MAX = 256  # bytes of a HELLO user agent
FRAME_HEADER_BYTES = 4  # big-endian u32 payload length
MAX_FRAME_BYTES = 4 * 1024 * 1024  # 4 MiB; a longer length prefix is refused unread (Bitcoin: 32 MB)
MAX_LOCATOR_HASHES = 64  # hashes in a GET_CHAIN locator (Bitcoin: MAX_LOCATOR_SZ = 101)
MAX_BLOCKS_PER_CHAIN = 500  # blocks in one CHAIN message (Bitcoin: 500 per getblocks inv)
CHAIN_BATCH_BYTES = 3 * 1024 * 1024  # a CHAIN batch is cut before its frame would pass this
MAX_PEERS_PER_MESSAGE = 1000  # addresses in one PEERS message (Bitcoin: MAX_ADDR_TO_SEND)
MAX_TXS_PER_MESSAGE = 1000  # transactions in one TXS answer
MAX_INV_TXIDS = MAX_TXS_PER_MESSAGE  # txids in one INV_TX or GET_TXS: one TXS answers a GET_TXS (Bitcoin: 50000)
RELAY_FEATURES_MAX = 16  # names in HELLO's relay list
RELAY_FEATURE_MAX_BYTES = 32  # bytes of one such name
MAX_INV_BLOCK_HASHES = 8  # hashes in one INV_BLOCK: the new tips since the last announcement (Bitcoin: 8 headers)
SHORT_ID_BYTES = 6  # a compact block's short transaction id (Bitcoin: BIP152, 6 bytes)

# --- relay (p2pchain/relay.py: announcements, requests, compact blocks) ----------------------
# txids one peer may have announced that we still want; more are ignored (Bitcoin: MAX_PEER_TX_ANNOUNCEMENTS)
RELAY_MAX_PEER_ANNOUNCED = 5000
# txids asked of one peer and not yet answered; more wait for its answers (Bitcoin: 100; one full TXS here)
RELAY_MAX_PEER_IN_FLIGHT = 1000
# transactions pooled within this long are announced together, one INV_TX per peer: fewer, fuller
# frames (Bitcoin trickles INV every 2 s outbound, 5 s inbound; here the latency a hop adds stays small)
RELAY_INV_INTERVAL_S = 0.1
RELAY_TX_REQUEST_TIMEOUT_S = 2.0  # a GET_TXS unanswered this long: ask the next announcer (Bitcoin: 60 s)
# a GET_BLOCK_TXN (or GET_CMPCT) unanswered this long: ask the next sender of the block; with
# none left, keep waiting for this one while it stays connected
RELAY_BLOCK_TXN_TIMEOUT_S = 2.0
# a sole sender (or announcer) of a block, connected but silent, is waited for this long in all;
# then the block is given up and comes by sync (as SYNC_STALL_S bounds a GET_CHAIN)
RELAY_BLOCK_WAIT_MAX_S = 30.0
RELAY_KNOWN_TXIDS_MAX = 4096  # txids remembered per peer as known to it (announced either way, or sent)
# txids announced to one peer and not yet fetched by it: what its GET_TXS is answered with, each once
RELAY_OFFERED_TXIDS_MAX = 4096
RELAY_KNOWN_BLOCKS_MAX = 64  # block hashes remembered per peer as known to it
# transactions kept besides the mempool to rebuild compact blocks: refused for a nonce gap, a full
# pool, missing funds, or evicted (Bitcoin: -blockreconstructionextratxn = 100)
RELAY_EXTRA_TXS_MAX = 1000
RELAY_MAX_PENDING_BLOCKS = 8  # compact blocks being rebuilt at once (waiting for BLOCK_TXN); the oldest is dropped
RELAY_MAX_BLOCK_SOURCES = 8  # other senders of a block being rebuilt, kept to ask when the first fails
# peers asked (SEND_CMPCT) to push each new block at once: those that last delivered a new block
# first; every other link only announces it (INV_BLOCK) (Bitcoin: BIP152's 3 high-bandwidth peers)
RELAY_HB_PEERS = 3
# announced blocks (INV_BLOCK) one peer may have us fetching at once, counted against the first to
# announce each; more of its announcements are ignored. Per peer, so that a peer announcing made-up
# hashes cannot take the room an honest announcement needs (an honest node announces one at a time)
RELAY_MAX_PEER_BLOCK_WANTS = 4
# new best blocks are announced (INV_BLOCK, the newest only) to the other cmpct-hb peers at most
# this often: the fallback when all high-bandwidth peers fail or withhold, so a delay is cheap,
# while announcing every block on every link was ~2,900 messages a block in the 200-node swarm
RELAY_BLOCK_INV_INTERVAL_S = 2.0
# a round of those announcements tells the peers that dialled us first and the ones we dialled this
# much later (all within RELAY_BLOCK_INV_INTERVAL_S): each link's dialler hears first and its own
# announcement, due later, finds the block known (at once, both ends announced: ~1.8 a link in the swarm)
RELAY_BLOCK_INV_OUTBOUND_DELAY_S = 0.5
# the last blocks we relayed, kept decoded: the only ones GET_BLOCK_TXN is answered for, and the only
# ones whose CMPCT_BLOCK copies are known by their first bytes and dropped unread
RELAY_RECENT_BLOCKS = 8

# --- ledger -------------------------------------------------------------------------------
MAX_BLOCK_BYTES = 1024 * 1024  # canonical bytes of a block (Bitcoin: 1 MB before segwit)
MAX_BLOCK_TXS = 4000  # transactions in one block, coinbase included
MAX_FUTURE_BLOCK_MS = 2 * 60 * 60 * 1000  # a block may be 2 h ahead of local time (Bitcoin: same)
# with retargeting the limit is this many thousandths of the half-life (and at most the 2 h above):
# 2**0.137 = 1.0996, so a timestamp at the limit raises the next target by at most 10 %, even with
# the ASERT approximation's 0.013 % error (docs/ledger.md, "Timestamps")
FUTURE_HALF_LIFE_PER_MILLE = 137
HASH_RATE_WINDOW_BLOCKS = 120  # /status estimates the network hash rate over this many blocks (Bitcoin: same)
MEDIAN_TIME_SPAN = 11  # blocks in the median-time-past window (Bitcoin: same)
MAX_MONEY = 2**62  # no amount, fee or balance may exceed this (keeps SQLite INTEGER safe)
MAX_ADDRESS_CHARS = 64  # an address field on the wire; real addresses are 40 hex chars
ORPHAN_POOL_MAX = 256  # blocks waiting for their parent (Bitcoin: MAX_ORPHAN_TRANSACTIONS=100)
ORPHAN_POOL_MAX_BYTES = 16 * 1024 * 1024  # canonical bytes of those blocks: 256 full blocks would be 256 MiB

# --- stored blocks: side branches and batches ------------------------------------------------
# blocks a store batch holds before it commits: batches of two peers that keep overlapping cannot
# defer the commit for ever, and a sync, whose batch is kept open from one CHAIN of 500 to the next
# (Store.batch's keep), commits every 2,000 blocks, not every 500: SQLite then rewrites the pages
# that the blocks' and transactions' random hash keys touch a quarter as often (over a 100,000-block
# chain written in batches of 500, 1,000 and 2,000: 6.6, 6.0 and 5.9 s of CPU, loaded). A kill -9
# loses at most these blocks and the commit under way, which a sync downloads again
STORE_BATCH_MAX_TXNS = 2000
# ... or once the blocks it stored reach this many canonical bytes, whichever comes first: its
# queue holds them decoded (up to DECODED_BYTES_PER_BYTE, 7, bytes of Python objects a canonical
# byte, plus DECODED_BLOCK_BYTES a block), so a sync of full blocks kept open for 2,000 of them
# would hold gigabytes; this bounds the queue near 56 MiB (and as much again in the commit under
# way) and what a kill -9 loses during a sync
STORE_BATCH_MAX_BYTES = 8 * 1024 * 1024
# a sync's last CHAIN (no more asked for) is committed behind this much later, or at once when the
# store is used before (a read, the next commit, the node stopping): the work that follows the end
# of a sync (relaying the new tip, answering /nodes/resolve) keeps the GIL meanwhile, where the
# commit's Python steps took it from the loop for ~1-2.5 ms (register_sync_200_ms, issue 14). A kill
# -9 in between loses that batch, as before its commit was written; a sync downloads it again
STORE_BEHIND_DELAY_S = 0.01
STORE_HOLD_S = 1.0  # a block that arrives alone (relayed, mined) may wait this long to be committed,
# with those that follow it within that time (Store.hold): the commit (~100 us of SQLite a block,
# most of a small block's checking) leaves the path a block takes to the next hop, and blocks that
# come faster than one per interval share one. A kill -9 loses at most this much of the chain
# (during a sync too: it is committed with the blocks of the sync's kept batch, Store.hold),
# downloaded again by a sync
SIDE_KEEP_DEPTH = 1000  # blocks: a side branch whose highest block is more than this below the tip,
# and to which none of the last this-many arriving blocks was added (a sync still fetching it is
# spared), is pruned. A side block nobody asked for is not stored at all (Core's AcceptBlock)
SIDE_BLOCKS_MAX_BYTES = 128 * 1024 * 1024  # stored bytes of side blocks (128 full blocks); a deeper
# competing branch of full blocks cannot be fetched whole (Bitcoin Core fetches headers first)
SIDE_BLOCKS_MAX = 2000  # side blocks kept; past it or the bytes above, the branches extended longest ago go
# SQLite's page cache of the node's own connection (PRAGMA cache_size; SQLite's default is 2,000
# KiB), sized to the store: a quarter of the file, at least STORE_PAGE_CACHE_MIN_KIB and at most
# STORE_PAGE_CACHE_KIB (set when the store opens and after each batch's commit). It fills as the
# store grows and then stays full, so it is memory a node pays once its store is that large: a
# small store's node keeps 1 MiB, as the soak's memory-growth target asks (issue 18). A block's
# rows go to two B-trees keyed by hashes (the blocks' hash index and the txid index, ~90 bytes a
# block and a transaction between them, ~15 % of the file), so each block touches a random page
# of each; once they outgrew a fixed 1 MiB cache (past ~10,000 blocks) every block read them back
# from the OS: at 100,000 blocks a quarter of a synced block's CPU was system time, and a
# 100-transaction block at that tip read ~100 pages (docs/benchmarks.md, issue 14)
STORE_PAGE_CACHE_KIB = 16 * 1024
STORE_PAGE_CACHE_MIN_KIB = 1024  # the least, a small store's (the fixed size before: the soak kept its memory)
# pages of SQLite's write-ahead log past which the store's thread copies them into the database
# file (a PASSIVE checkpoint on a connection of its own, Store._committed; SQLite's automatic
# checkpoint, default 1,000 pages, is off: it runs inside a COMMIT, on the event loop's thread for
# the held blocks, where it stalled the loop): each such checkpoint syncs the log and the file
# to disk (two fsyncs) and copies every page written since the last one. A sync's batch of 500
# blocks writes ~1,000 pages at 100,000 blocks (mostly the same pages of the hash-keyed indexes,
# again each batch), so at 1,000 every batch checkpointed: ~300 fsyncs in a 100,000-block sync,
# and a 100-transaction block at that tip checkpointed every ~9 blocks. At 10,000 a checkpoint
# copies a page written by ten batches once: 11 instead of 18 us of system time a synced block
# (docs/benchmarks.md, issue 14). The price: the log file grows to ~40 MiB (4 KiB pages) while the
# node runs (SQLite reuses it from its start after a checkpoint, and deletes it when the node
# stops; cutting it back after each checkpoint cost more system time than it saved), and a power
# cut loses at most the commits since the last checkpoint (synchronous=NORMAL; a kill -9 none)
STORE_WAL_CHECKPOINT_PAGES = 10_000
# the read-only connection that serves blocks to peers (p2pchain/serve.py): it reads runs of bodies
# once each, which a cache seldom sees again
SERVE_PAGE_CACHE_KIB = 256
# the interpreter's GIL switch interval in a node process (cli.tune_interpreter; Python's default is 5 ms):
# a thread that wants the GIL back waits this long for a busy event loop to give it up. The
# store's thread writes a sync batch behind (Store.batch) in a few SQLite steps, each a wait for
# the GIL: at 5 ms it fell behind the loop and a 20,000-block sync took 30 % longer than without it;
# at 0.5 ms it took a third less (docs/benchmarks.md)
GIL_SWITCH_INTERVAL_S = 0.0005
# the cyclic garbage collector's youngest-generation threshold in a node process (cli.tune_interpreter;
# Python's default is 700 container allocations): a CHAIN of 500 blocks is ~5,000 containers
# alive while it is checked, so at 700 the young collections promoted every batch to the oldest
# generation, and each batch's dead objects counted toward a full collection, which walks every
# block-index entry: 4.7 s of CPU in a 100,000-block sync, 0.05 s at this threshold. Only garbage
# in reference cycles waits for a collection, and the node makes little
GC_YOUNG_THRESHOLD = 50_000
# glibc's malloc gives a request this large or larger its own mmap (and a munmap when it is freed)
# in a node process (cli.tune_interpreter). asyncio's socket transports recv() into a fresh 256 KiB
# buffer for every read and shrink it to what came: at glibc's starting threshold, 128 KiB, each read
# of a 200-byte frame was an mmap, a page fault and a munmap, ~18 instead of ~1.5 us (measured), and
# the 200-node in-process swarm reads ~1,000 frames a block. glibc raises the threshold to the size
# of the largest such block freed so far (mallopt(3)), which msgpack.packb did by chance, making and
# freeing a 1 MiB buffer per call, until 991c130 kept one Packer per thread; the node now does it
MALLOC_MMAP_THRESHOLD_BYTES = 1024 * 1024

# --- mempool ------------------------------------------------------------------------------
MEMPOOL_MAX_TXS = 50_000  # pending transactions
MEMPOOL_MAX_BYTES = 32 * 1024 * 1024  # canonical bytes of pending transactions (Bitcoin: 300 MB)
# pooled transactions pushed to a node that connects (a healed partition, a restart), in mining
# order so nonces arrive in sequence: half the send queue, so the push never fills it alone
MEMPOOL_PUSH_MAX_TXS = 512
MEMPOOL_PUSH_MAX_BYTES = 256 * 1024  # bytes of those transactions
MEMPOOL_PUSH_INTERVAL_S = 60.0  # a listening address gets that push at most once in this many seconds
MEMPOOL_PUSHES_PER_HOST = 16  # and one host (its addresses, whatever ports they claim) at most this many times in it
MEMPOOL_PUSH_REMEMBERED = 1024  # addresses remembered for that
# Arriving NEW_TX/SUBMIT_TX signatures, checked in batches on the verifier threads (p2pchain/sigbatch.py):
TX_VERIFY_BATCH_MAX = 128  # transactions in one batch: ~15 ms of Ed25519 on one core, so a batch ends soon
# and the last batches of a burst end close together on the threads (at 256 a core idled ~3 % more of the
# ingest bench's 2,000-transaction bursts, waiting for the other thread's last batch: docs/benchmarks.md)
TX_VERIFY_PENDING_MAX = 4096  # queued or being checked, all peers; past it a peer's reader waits (TCP pushes back)
TX_VERIFY_PENDING_PER_PEER = 1024  # of those, from one peer: one flooding connection cannot hold the whole queue
TX_VERIFY_SHARE_MIN = 32  # signatures (~5 ms): a queue this short goes whole to the first thread free, not shared
TX_VERIFY_RUN_BATCHES = 4  # batches a thread checks in a row before it queues behind the executor's other work
VERIFY_PROC_IDLE_S = 30.0  # a signature worker process exits after this long without a batch (p2pchain/verifyprocs.py)
VERIFY_PROC_CLOSE_S = 2.0  # seconds a stopping node waits for a worker to exit before killing it
# a worker that has not taken a batch and answered it within this many seconds is killed (a stopped
# or hung process) and its batch checked in the thread: ~100 x a full batch's check, so a loaded
# machine does not trip it, and a hung worker holds a verifier thread this long at most
VERIFY_PROC_ANSWER_S = 2.0

# --- peers --------------------------------------------------------------------------------
TARGET_OUTBOUND = 8  # outbound connections kept open (Bitcoin: 8 full-relay)
MAX_INBOUND = 64  # inbound connections accepted (Bitcoin: 125 total)
MAX_INBOUND_PER_IP = 16  # inbound connections from one address (loopback swarms share 127.0.0.1)
HANDSHAKE_TIMEOUT_S = 10.0  # seconds to receive HELLO
PING_INTERVAL_S = 30.0  # silence before we PING (Bitcoin: 2 min)
PONG_TIMEOUT_S = 20.0  # a PING unanswered this long drops the peer (Bitcoin: 20 min)
SEND_QUEUE_MAX = 1024  # frames queued to one peer; a peer that stays behind is dropped
SEND_QUEUE_MAX_BYTES = 8 * 1024 * 1024  # bytes of those frames: two full CHAIN batches and gossip
# (Bitcoin: -maxsendbuffer 1 MB); without it 1024 queued CHAIN answers could hold 3 GiB
# bytes of blocks (GET_CHAIN, GET_BLOCKS, GET_BLOCK answers) served to one peer: a burst, then a rate;
# beyond it the peer waits (is not read), never refused. A 100,000-block sync of small blocks fits the burst
SERVE_BURST_BYTES = 32 * 1024 * 1024
SERVE_BYTES_PER_S = 4 * 1024 * 1024
SERVE_CACHE_BYTES = 8 * 1024 * 1024  # recent CHAIN answers kept encoded: a flood of one GET_CHAIN costs one read
SEND_DRAIN_TIMEOUT_S = 10.0  # a write that cannot drain this long drops the peer
# bytes a peer's reader takes from its socket's buffer at once; every frame complete in them is
# handled before the next read (~130 SUBMIT_TX: a run of transactions goes to the threads in one go)
READ_CHUNK_BYTES = 32 * 1024
# messages of one run (consecutive transactions from a chunk) handed over in one call, at most; then the
# peer's turn (PEER_TURN_S) is checked, so a chunk of duplicates cannot hold the loop for its whole length
PEER_RUN_MAX = 32
SEND_WRITE_MAX_BYTES = 256 * 1024  # queued frames joined into one socket write, at most (one system call a burst)
CLOSE_FLUSH_S = 1.0  # a closing peer's last frames get this long to be sent; then they are dropped
DIAL_TIMEOUT_S = 5.0  # seconds to open an outbound TCP connection
SYNC_STALL_S = 30.0  # a GET_CHAIN unanswered this long drops the sync peer (Bitcoin: block download timeout)
# a peer that sends a block we cannot connect takes the sync over when the running sync has connected
# nothing this long (seconds): one silent or slow sync peer cannot hold the only sync slot
SYNC_TAKEOVER_S = 2.0
SYNC_FRUITLESS_MAX = 3  # sync rounds that bring nothing while the peer claims more: then it is dropped (no ban)
# blocks of a CHAIN processed between two turns of the event loop (other peers are served between
# them), and told to the chain's listeners at once: ~3 ms of work
SYNC_RUN_BLOCKS = 64
# turns of the event loop given to the others between two runs. A sleep(0) is one turn, and the
# sync's next step is always first in the next one: a request needing a few steps to be answered
# (an HTTP request: read, parsed, dispatched to its handler: 3) waited one run per step, and
# /nodes/resolve, asked during a fresh node's sync, came in only after its last run. A turn costs
# ~20 us when nothing else is ready.
SYNC_YIELD_TURNS = 3
MAX_PERSISTENT_PEERS = 64  # addresses kept connected (--peer and /nodes/register); beyond, register refuses
REGISTER_MAX_FAILURES = 3  # dials of a registered address that never handshook before it is forgotten
RECONNECT_BASE_S = 0.5  # first reconnect delay; doubled each failure, with jitter
RECONNECT_MAX_S = 30.0  # reconnect delay ceiling
PEER_MSG_RATE = 10_000.0  # messages/s a peer may send on average (token bucket); above the ~9,000
# signed txs/s a node can check, so one client can feed it at full speed (issue 4: >= 5,000/s)
PEER_MSG_BURST = 4000  # token bucket depth
PEER_TURN_S = 0.002  # a peer's already-buffered messages are handled this long, then the others get a turn
SEEN_CACHE_MAX = 50_000  # recently seen block/tx ids remembered for gossip de-duplication
MAX_INVALID_REMEMBERED = 10_000  # hashes of invalid blocks kept to refuse them again cheaply
# the address book (p2pchain/addrman.py, after Bitcoin Core's addrman: 1024 new and 256 tried buckets of 64)
ADDRMAN_NEW_BUCKETS = 128  # buckets of addresses heard of
ADDRMAN_TRIED_BUCKETS = 32  # buckets of addresses we completed a handshake with
ADDRMAN_BUCKET_SIZE = 16  # entries per bucket: at most 2,048 new and 512 tried addresses
ADDRMAN_SOURCE_BUCKETS = 8  # new buckets one source's network group can reach: it holds at most 128 entries
ADDRMAN_GROUP_TRIED_BUCKETS = 4  # tried buckets one network group can reach (Core: 8)
ADDRMAN_MAX_FAILURES = 3  # dials in a row that fail before an address is forgotten
ADDR_RATE_PER_S = 0.1  # addresses a peer may send unasked, per second (token bucket; Bitcoin: same)
# addresses accepted in PEERS beyond that: the answer to our GET_PEERS (we send one per connection)
ADDR_BURST = MAX_PEERS_PER_MESSAGE
BAN_SECONDS = 24 * 60 * 60  # discouragement period (Bitcoin: DEFAULT_MISBEHAVING_BANTIME 24 h)
MAX_BANS = 10_000  # banned addresses kept; past it the ban that ends soonest goes (many-address attackers)
# characters of a reason (a ban, a drop, a log line) built from what a peer sent: error texts quote
# its data (map keys, names), and a 12,000-character ban reason once broke every client's STATUS
MAX_REASON_CHARS = 256
MAX_STATUS_BANS = 100  # bans listed in STATUS and /status (the latest first); 'bans_total' counts them all
SELF_ADDRS_MAX = 64  # addresses remembered as being this node (its own port under several aliases)
SHUTDOWN_GRACE_S = 1.5  # graceful close before a forced abort on SIGTERM

# --- http shim ----------------------------------------------------------------------------
HTTP_MAX_BODY_BYTES = 1024 * 1024  # larger request bodies get 413
HTTP_CHAIN_PAGE_MAX = 500  # blocks per /chain page
HTTP_STREAM_CHUNK_BYTES = 256 * 1024  # a streamed /chain is written in chunks of about this many
# bytes of JSON, and the event loop serves peers between chunks (a block is at most ~3 MB of JSON);
# /nodes/resolve renders the JSON cache's held blocks about this much text a loop turn
HTTP_JSON_CACHE_BLOCKS = 1000  # the JSON text of the blocks last connected, kept for /chain and
# /nodes/resolve (p2pchain/chainjson.py): blocks (two sync batches of MAX_BLOCKS_PER_CHAIN)
HTTP_JSON_CACHE_BYTES = 4 * 1024 * 1024  # about this many bytes of memory at most (a block held as
# it came counted as DECODED_BYTES_PER_BYTE, its JSON text once rendered as its str): a fresh node's
# whole chain after /nodes/register is answered from memory, not read back from the store
DECODED_BYTES_PER_BYTE = 7  # a decoded block costs at most about this many bytes of Python objects a
# canonical byte, plus DECODED_BLOCK_BYTES (tracemalloc of Block.from_wire with its txids: a block of
# 2,000 payments, 408,092 canonical bytes, holds 2.51 MB, 6.15 a byte; a coinbase-only one of 161 bytes, 1,888)
DECODED_BLOCK_BYTES = 1024  # bytes: a decoded block's own objects (header, tuples, hashes)
HTTP_JSON_CACHE_ENTRY_BYTES = 400  # bytes an entry of that cache costs besides its block or text (its
# key, tuple and count, and its share of the ordered dict: 330 measured with tracemalloc, 6 entries)
HTTP_HEAVY_MAX = 4  # /chain and /nodes/resolve requests running at once; beyond, 503 at once
HTTP_REGISTER_MAX = 64  # addresses in one /nodes/register request
HTTP_REGISTER_WAIT_S = 5.0  # /nodes/register waits this long for new peers to handshake, then answers
RESOLVE_TIMEOUT_S = 10.0  # /nodes/resolve waits this long for every peer's CHAIN and the sync it starts
# seconds requests still running at shutdown get, then they are cancelled: aiohttp's default (60 s)
# outlasted SHUTDOWN_GRACE_S, so a waiting /nodes/resolve or /mine kept Node.stop() from running
HTTP_SHUTDOWN_S = 0.25
HTTP_AUTH_MAX_FAILURES = 10  # wrong tokens one client address may send to the shim's guarded endpoints per window
HTTP_AUTH_FAILURE_WINDOW_S = 60.0  # that window in seconds: past the limit, 429 until it ends
HTTP_AUTH_TRACKED_MAX = 4096  # client addresses whose failures are remembered (the oldest go first)

# --- wire decoding bounds (msgpack refuses a longer object before allocating it) ------------
# items in one msgpack array: the longest list a message may hold (a block's transactions)
MAX_WIRE_ARRAY_ITEMS = max(MAX_BLOCK_TXS, MAX_BLOCKS_PER_CHAIN, MAX_PEERS_PER_MESSAGE, MAX_TXS_PER_MESSAGE)
MAX_WIRE_MAP_ENTRIES = 64  # entries in one msgpack map: a message has < 16 fields, a STATUS < 32 keys
MAX_WIRE_STR_BYTES = 4096  # one msgpack string: error texts, status values, user agents
MAX_WIRE_BIN_BYTES = 4096  # one msgpack bin: real ones are <= 255 (keys, signatures, hashes, work)
MAX_PEER_ADDR_CHARS = 261  # one "host:port" in PEERS: a 255-char DNS name, ":" and 5 digits
# arrays and maps in one payload, nested ones included: a valid 3 MiB CHAIN of the smallest signed
# transactions (~190 bytes each) holds ~17,000. An empty map is one byte, so without this a 4 MiB
# frame decoded to 4 million dicts (~300 MiB); at the cap they hold about 5 MiB
MAX_WIRE_CONTAINERS = 65_536
# per-message-type payload limits, checked before the payload is unpacked (Bitcoin: a per-command
# size check in ProcessMessage); the types each one covers are listed in docs/protocol.md section 2
MAX_SMALL_MESSAGE_BYTES = 4096  # a PING, PONG, HELLO, GET_CHAIN (64 hashes), GET_* query or ACCOUNT
MAX_TX_MESSAGE_BYTES = 16 * 1024  # one transaction (under 1 KiB) or two 4,096-byte strings, with their fields
MAX_BLOCK_MESSAGE_BYTES = 2 * MAX_BLOCK_BYTES  # one block on the wire (msgpack adds a little to its canonical bytes)

# --- miner --------------------------------------------------------------------------------
MINER_CHUNK_NONCES = 16_384  # nonces a worker hashes between looks for a new job: ~6 ms at 2.8 MH/s,
# so a new tip stops every worker well within 100 ms even on a core 10x slower
MINER_STOP_TIMEOUT_S = 2.0  # seconds close() waits for a worker to exit before terminating it
# A block of at most this many expected hashes (2**bits) is mined in the node's own process: well under
# a millisecond on one core, less than waking worker processes (the 8-bit GET /mine of the tutorials)
MINER_INPROCESS_MAX_WORK = 2**10
MINER_INPROCESS_CHUNK_NONCES = 1024  # nonces hashed in-process between turns of the event loop (~0.4 ms)
MINER_INPROCESS_BUDGET_FACTOR = 64  # in-process search gives up after this many times the expected work
MINER_IDLE_EXIT_S = 60.0  # worker processes with no job this long exit; the next block starts them again

# --- command line (p2pchain wallet|balance|send|status|chain|tx) -----------------------------
CLI_CONNECT_TIMEOUT_S = 10.0  # seconds to reach and handshake a node before saying it is down
CLI_WAIT_TIMEOUT_S = 300.0  # `send --wait` gives up after this long: a network nobody mines on never confirms
CLI_POLL_S = 0.5  # `send --wait` asks about its transaction this often, sooner when a block is gossiped
CLI_WATCH_INTERVAL_S = 2.0  # seconds between `status --watch` refreshes
CLI_CHAIN_LIMIT = 10  # blocks `p2pchain chain` lists by default: the newest ones

# --- explorer and its live event streams (p2pchain/events.py, p2pchain/explorer.py) ---------
EVENT_STREAMS_MAX = 64  # open Server-Sent-Event streams (browser tabs); one more gets 503
EVENT_QUEUE_MAX = 256  # events waiting for one stream; past this the stream is dropped (the page
# reconnects and catches up), so a slow or stalled browser never holds the node's memory
EVENT_WRITE_TIMEOUT_S = 10.0  # a stream whose socket takes longer to accept a write is dropped
EVENT_KEEPALIVE_S = 5.0  # a comment line after this long without events: a closed tab frees its slot by then
EVENT_RETRY_MS = 1000  # the browser's reconnect delay after a dropped stream (SSE "retry:")
EVENT_TIP_BLOCKS = 20  # newest connected blocks described in one tip event (a sync connects 500)
# new mempool transactions are sent in one "txs" event per EVENT_TX_BATCH_S seconds: a flood of
# thousands a second costs ten events a second, not thousands times the open streams
EVENT_TX_BATCH_S = 0.1
EVENT_TX_BATCH_MAX = 20  # transactions described in one "txs" event (the newest; its count covers all)
EXPLORER_BLOCKS = 20  # blocks on the explorer's home page
ADDRINDEX_BATCH_BLOCKS = 100  # blocks added to the address index per store transaction (then the
# event loop serves others): the index is filled behind the tip, never in a block's own commit
EXPLORER_PAGE_TXS = 25  # transactions per page of an address's history, and per block page
