//! Paged KV-cache memory: a fixed pool of blocks of `block_size` token slots.
//!
//! Sequences hold their blocks through [`Block`] handles. A handle is a reference: cloning
//! it shares the block (prefix sharing, forked sequences), dropping it lets go, and the block
//! returns to the pool when its last holder lets go. A sequence that is dropped, for any
//! reason, therefore cannot leak memory.
//!
//! Blocks are written append-only. The one exception is the last, partly filled block of a
//! sequence that shares it (after a fork): [`BlockTable::reserve`] then gives the sequence a
//! private copy and reports the copy for the engine to perform (copy-on-write).
//!
//! The prefix cache remembers full blocks by a hash of their tokens chained with the hash of
//! everything before them, so a hit means the whole prefix matches. A cached block that no
//! sequence holds stays in the pool as evictable; it is reused on a hit and evicted, least
//! recently used first, when the pool runs out of never-cached blocks.

use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};

/// Index of a block in the device's KV pool.
pub type BlockId = u32;

#[derive(Debug)]
struct Pool {
    refcount: Vec<u32>,
    /// Blocks nobody holds and nothing is cached in.
    free: Vec<BlockId>,
    /// Content hash of blocks registered in the prefix cache.
    hash: Vec<Option<u64>>,
    cached: HashMap<u64, BlockId>,
    /// Cached blocks nobody holds, least recently used first: `(last use, block)`.
    evictable: BTreeSet<(u64, BlockId)>,
    last_use: Vec<u64>,
    tick: u64,
    stats: CacheStats,
}

/// Prefix-cache counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CacheStats {
    /// Full prompt blocks looked up.
    pub queried_blocks: u64,
    /// Of those, found in the cache.
    pub hit_blocks: u64,
    pub evictions: u64,
}

impl CacheStats {
    pub fn hit_rate(&self) -> f64 {
        if self.queried_blocks == 0 { 0.0 } else { self.hit_blocks as f64 / self.queried_blocks as f64 }
    }
}

impl Pool {
    fn release(&mut self, id: BlockId) {
        let i = id as usize;
        assert!(self.refcount[i] > 0, "block {id} released more often than taken");
        self.refcount[i] -= 1;
        if self.refcount[i] == 0 {
            if self.hash[i].is_some() {
                self.tick += 1;
                self.last_use[i] = self.tick;
                self.evictable.insert((self.tick, id));
            } else {
                self.free.push(id);
            }
        }
    }

    fn acquire_cached(&mut self, id: BlockId) {
        let i = id as usize;
        if self.refcount[i] == 0 {
            self.evictable.remove(&(self.last_use[i], id));
        }
        self.refcount[i] += 1;
    }

    fn allocate(&mut self) -> Option<BlockId> {
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                let (tick, id) = self.evictable.pop_first()?;
                debug_assert_eq!(tick, self.last_use[id as usize]);
                if let Some(h) = self.hash[id as usize].take() {
                    self.cached.remove(&h);
                }
                self.stats.evictions += 1;
                id
            }
        };
        self.refcount[id as usize] = 1;
        Some(id)
    }
}

/// The shared pool; cheap to clone (all clones are the same pool).
#[derive(Debug, Clone)]
pub struct BlockManager {
    pool: Arc<Mutex<Pool>>,
    block_size: usize,
}

/// A held block. Clone to share, drop to let go.
#[derive(Debug)]
pub struct Block {
    id: BlockId,
    pool: Arc<Mutex<Pool>>,
}

impl Block {
    pub fn id(&self) -> BlockId {
        self.id
    }
}

impl Clone for Block {
    fn clone(&self) -> Self {
        lock(&self.pool).refcount[self.id as usize] += 1;
        Block { id: self.id, pool: self.pool.clone() }
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        lock(&self.pool).release(self.id);
    }
}

fn lock(pool: &Mutex<Pool>) -> MutexGuard<'_, Pool> {
    // The pool's state is consistent between operations, so a panic elsewhere cannot have
    // left it half-updated.
    pool.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl BlockManager {
    pub fn new(num_blocks: usize, block_size: usize) -> Self {
        assert!(block_size > 0 && num_blocks <= BlockId::MAX as usize);
        let pool = Pool {
            refcount: vec![0; num_blocks],
            free: (0..num_blocks as BlockId).rev().collect(),
            hash: vec![None; num_blocks],
            cached: HashMap::new(),
            evictable: BTreeSet::new(),
            last_use: vec![0; num_blocks],
            tick: 0,
            stats: CacheStats::default(),
        };
        Self { pool: Arc::new(Mutex::new(pool)), block_size }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn num_blocks(&self) -> usize {
        lock(&self.pool).refcount.len()
    }

    /// Blocks that can be handed out now (never-cached plus evictable cached ones).
    pub fn available(&self) -> usize {
        let pool = lock(&self.pool);
        pool.free.len() + pool.evictable.len()
    }

    /// Blocks held by at least one sequence.
    pub fn in_use(&self) -> usize {
        let pool = lock(&self.pool);
        pool.refcount.len() - pool.free.len() - pool.evictable.len()
    }

    pub fn stats(&self) -> CacheStats {
        lock(&self.pool).stats
    }

    /// A fresh block, evicting the least recently used cached block if no never-cached
    /// block is left; `None` when every block is held.
    pub fn allocate(&self) -> Option<Block> {
        let id = lock(&self.pool).allocate()?;
        Some(Block { id, pool: self.pool.clone() })
    }

    /// The cached blocks holding the longest cached prefix of `hashes` (see
    /// [`prefix_hashes`]), taken for the caller.
    pub fn lookup(&self, hashes: &[u64]) -> Vec<Block> {
        let mut pool = lock(&self.pool);
        pool.stats.queried_blocks += hashes.len() as u64;
        let mut found = Vec::new();
        for h in hashes {
            let Some(&id) = pool.cached.get(h) else { break };
            pool.acquire_cached(id);
            found.push(Block { id, pool: self.pool.clone() });
        }
        pool.stats.hit_blocks += found.len() as u64;
        found
    }

    /// Records that `block` holds the full block of tokens whose chained hash is `hash`.
    /// If another block already holds that content, the cache keeps the existing one.
    pub fn register(&self, block: &Block, hash: u64) {
        let mut pool = lock(&self.pool);
        let i = block.id as usize;
        if pool.hash[i].is_none() && !pool.cached.contains_key(&hash) {
            pool.hash[i] = Some(hash);
            pool.cached.insert(hash, block.id);
        }
    }

    /// Panics if the pool's bookkeeping is inconsistent: every block is exactly one of held,
    /// free or evictable, and the cache index matches the blocks' hashes.
    pub fn check_invariants(&self) {
        let pool = lock(&self.pool);
        let n = pool.refcount.len();
        let mut seen = vec![0u8; n];
        for &id in &pool.free {
            seen[id as usize] += 1;
            assert_eq!(pool.refcount[id as usize], 0, "free block {id} is held");
            assert!(pool.hash[id as usize].is_none(), "free block {id} is cached");
        }
        for &(tick, id) in &pool.evictable {
            seen[id as usize] += 1;
            assert_eq!(pool.refcount[id as usize], 0, "evictable block {id} is held");
            assert_eq!(pool.last_use[id as usize], tick);
            assert!(pool.hash[id as usize].is_some(), "evictable block {id} is not cached");
        }
        for id in 0..n {
            let listed = seen[id];
            assert!(listed <= 1, "block {id} listed twice");
            assert_eq!(listed == 1, pool.refcount[id] == 0, "block {id}: refcount {} but listed {listed}", pool.refcount[id]);
        }
        for (&h, &id) in &pool.cached {
            assert_eq!(pool.hash[id as usize], Some(h), "cache index disagrees for block {id}");
        }
    }
}

/// Chained hashes of the full blocks of `tokens`: each covers its block and all before it.
pub fn prefix_hashes(tokens: &[u32], block_size: usize) -> Vec<u64> {
    let mut parent = 0u64;
    tokens
        .chunks_exact(block_size)
        .map(|block| {
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            parent.hash(&mut hasher);
            block.hash(&mut hasher);
            parent = hasher.finish();
            parent
        })
        .collect()
}

/// Not enough free blocks for a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("out of KV blocks: {needed} needed, {available} available")]
pub struct OutOfBlocks {
    pub needed: usize,
    pub available: usize,
}

/// A copy the engine must perform before writing: block `from`'s slots into block `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct BlockCopy {
    pub from: BlockId,
    pub to: BlockId,
}

/// The blocks of one sequence, in order, and how many token slots of them are used.
#[derive(Debug, Default)]
pub struct BlockTable {
    blocks: Vec<Block>,
    len: usize,
    /// Set by [`BlockTable::fork`]: only then can the partly filled tail be shared.
    forked: bool,
}

impl BlockTable {
    /// A table starting with cached prefix blocks (all full).
    pub fn from_prefix(blocks: Vec<Block>, block_size: usize) -> Self {
        let len = blocks.len() * block_size;
        Self { blocks, len, forked: false }
    }

    pub fn ids(&self) -> Vec<BlockId> {
        self.blocks.iter().map(Block::id).collect()
    }

    pub fn blocks(&self) -> &[Block] {
        &self.blocks
    }

    /// Token slots in use.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Token slots allocated.
    pub fn capacity(&self, block_size: usize) -> usize {
        self.blocks.len() * block_size
    }

    /// Blocks needed to grow by `n` tokens (not counting a copy-on-write).
    pub fn blocks_needed(&self, n: usize, block_size: usize) -> usize {
        (self.len + n).div_ceil(block_size).saturating_sub(self.blocks.len())
    }

    /// Makes room for positions up to `end` (a no-op when the table already covers them);
    /// see [`BlockTable::reserve`].
    pub fn ensure(&mut self, manager: &BlockManager, end: usize) -> Result<Option<BlockCopy>, OutOfBlocks> {
        if self.len >= end { Ok(None) } else { self.reserve(manager, end - self.len) }
    }

    /// Makes room for `n` more tokens and counts them as used. All or nothing: on
    /// [`OutOfBlocks`] the table is unchanged. Returns the copy to perform if the partly
    /// filled last block was shared.
    pub fn reserve(&mut self, manager: &BlockManager, n: usize) -> Result<Option<BlockCopy>, OutOfBlocks> {
        let bs = manager.block_size();
        let shared_tail = self.forked
            && self.len % bs != 0
            && n > 0
            && self.blocks.last().is_some_and(|b| lock(&b.pool).refcount[b.id as usize] > 1);
        let needed = self.blocks_needed(n, bs) + usize::from(shared_tail);
        if needed == 0 {
            self.len += n;
            return Ok(None);
        }
        // One lock for the whole reservation: this is the decode hot path.
        let mut pool = lock(&manager.pool);
        let available = pool.free.len() + pool.evictable.len();
        if needed > available {
            return Err(OutOfBlocks { needed, available });
        }
        let private = shared_tail.then(|| pool.allocate().expect("counted as available"));
        while self.blocks.len() * bs < self.len + n {
            self.blocks.push(Block { id: pool.allocate().expect("counted as available"), pool: manager.pool.clone() });
        }
        drop(pool);
        // Swapped in after the lock is released: dropping the shared block takes it.
        let copy = private.map(|id| {
            let tail = self.len / bs;
            let old = std::mem::replace(&mut self.blocks[tail], Block { id, pool: manager.pool.clone() });
            BlockCopy { from: old.id, to: id }
        });
        self.len += n;
        Ok(copy)
    }

    /// A second table sharing every block (for n > 1 sampling from one prompt).
    pub fn fork(&mut self) -> Self {
        self.forked = true;
        Self { blocks: self.blocks.clone(), len: self.len, forked: true }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_return_to_the_pool_when_the_last_holder_drops() {
        let m = BlockManager::new(4, 16);
        let a = m.allocate().unwrap();
        let shared = a.clone();
        assert_eq!((m.in_use(), m.available()), (1, 3));
        drop(a);
        assert_eq!(m.in_use(), 1);
        drop(shared);
        assert_eq!((m.in_use(), m.available()), (0, 4));
        m.check_invariants();
    }

    #[test]
    fn reserve_is_all_or_nothing() {
        let m = BlockManager::new(3, 4);
        let mut t = BlockTable::default();
        t.reserve(&m, 9).unwrap();
        assert_eq!((t.len(), t.blocks().len()), (9, 3));
        let err = t.reserve(&m, 4).unwrap_err();
        assert_eq!(err, OutOfBlocks { needed: 1, available: 0 });
        assert_eq!((t.len(), t.blocks().len()), (9, 3));
        t.reserve(&m, 3).unwrap();
        assert_eq!(t.len(), 12);
        drop(t);
        assert_eq!(m.available(), 3);
    }

    #[test]
    fn forked_sequences_copy_their_shared_partial_block_on_write() {
        let m = BlockManager::new(8, 4);
        let mut a = BlockTable::default();
        a.reserve(&m, 6).unwrap();
        let mut b = a.fork();
        assert_eq!(m.in_use(), 2);
        let copy = b.reserve(&m, 1).unwrap().expect("tail was shared");
        assert_eq!(copy.from, a.ids()[1]);
        assert_ne!(b.ids()[1], a.ids()[1]);
        assert_eq!(b.ids()[0], a.ids()[0], "full blocks stay shared");
        assert_eq!(a.reserve(&m, 1).unwrap(), None, "a's tail is private now");
        drop(a);
        drop(b);
        assert_eq!(m.available(), 8);
        m.check_invariants();
    }

    #[test]
    fn prefix_cache_hits_and_lru_eviction() {
        let m = BlockManager::new(3, 2);
        let tokens = [1, 2, 3, 4, 5];
        let hashes = prefix_hashes(&tokens, 2);
        assert_eq!(hashes.len(), 2);
        {
            let mut t = BlockTable::default();
            t.reserve(&m, 5).unwrap();
            for (block, h) in t.blocks().iter().zip(&hashes) {
                m.register(block, *h);
            }
        }
        assert_eq!((m.in_use(), m.available()), (0, 3));
        let hit = m.lookup(&hashes);
        assert_eq!(hit.len(), 2);
        assert_eq!(m.stats().hit_blocks, 2);
        drop(hit);
        // A different first block shares nothing, even with the same second block.
        assert!(m.lookup(&prefix_hashes(&[9, 9, 3, 4], 2)).is_empty());
        // Exhausting the pool evicts the least recently used cached block first.
        let held: Vec<_> = (0..3).map(|_| m.allocate().unwrap()).collect();
        assert_eq!(m.stats().evictions, 2);
        assert!(m.lookup(&hashes).is_empty());
        drop(held);
        m.check_invariants();
    }
}
