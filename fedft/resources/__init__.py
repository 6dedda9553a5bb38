"""Resource-limited clients: device and network profiles, simulated time, memory, availability.

fedft measures bytes (the ledger) and FLOPs (``FlopCounterMode``) exactly; this package turns
them into what a user of real devices asks: how long a round takes on a phone over 4G
(:mod:`fedft.resources.timing`), whether a client's part fits its memory
(:mod:`fedft.resources.memory`), and which clients are online (:mod:`fedft.resources.availability`).
Profiles (:mod:`fedft.resources.profiles`) are plain data; ``fedft profiles`` lists them.
"""
