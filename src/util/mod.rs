//! Infrastructure every stage uses and none owns: the process allocator's cap, the error type, atomic writes and JSONL logs,
//! hashing, seeds from text, shards of a work list, number formatting, progress bars, the run
//! manifest that records how a result was made, and the devices a model may run on.
pub mod alloc;
pub mod device;
pub mod error;
pub mod fmt;
pub mod io;
pub mod lock;
pub mod manifest;
pub mod paths;
pub mod progress;
pub mod seed;
pub mod shard;
