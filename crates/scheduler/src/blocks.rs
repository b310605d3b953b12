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

    /// The longest cached prefix of `hashes` that every group can serve: a group with a
    /// window needs only the blocks its window shows from the first position after the
    /// prefix, the others every block. Returns, per group, the blocks taken for the caller
    /// and how many leading blocks it does not need.
    pub fn lookup_groups(&self, hashes: &[u64], windows: &[Option<usize>]) -> Vec<(Vec<Block>, usize)> {
        let bs = self.block_size;
        let mut pool = lock(&self.pool);
        pool.stats.queried_blocks += hashes.len() as u64;
        let present: Vec<Vec<bool>> = (0..windows.len())
            .map(|g| hashes.iter().map(|&h| pool.cached.contains_key(&group_hash(h, g))).collect())
            .collect();
        // Blocks a group needs for a prefix of k blocks: its window's from position k * bs.
        let first_needed = |window: &Option<usize>, k: usize| window.map_or(0, |w| first_visible(k * bs, w) / bs);
        let fits = |k: usize| windows.iter().zip(&present).all(|(w, p)| p[first_needed(w, k)..k].iter().all(|&x| x));
        let k = (0..=hashes.len()).rev().find(|&k| fits(k)).unwrap_or(0);
        pool.stats.hit_blocks += k as u64;
        windows
            .iter()
            .enumerate()
            .map(|(g, window)| {
                let first = first_needed(window, k);
                let blocks = hashes[first..k]
                    .iter()
                    .map(|&h| {
                        let id = pool.cached[&group_hash(h, g)];
                        pool.acquire_cached(id);
                        Block { id, pool: self.pool.clone() }
                    })
                    .collect();
                (blocks, first)
            })
            .collect()
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

/// Chained hashes of the full blocks of `tokens`: each covers its block and all before it,
/// and `salt` (see [`crate::Request::cache_salt`]).
pub fn prefix_hashes(tokens: &[u32], block_size: usize, salt: u64) -> Vec<u64> {
    let mut parent = salt;
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

/// The blocks of one sequence, in order, and how many token slots of them are used. The
/// first `released` blocks are gone (they fell outside a sliding window): their positions
/// are never read again.
#[derive(Debug, Default)]
pub struct BlockTable {
    /// The blocks from `released` on.
    blocks: Vec<Block>,
    released: usize,
    len: usize,
    /// Set by [`BlockTable::fork`]: only then can the partly filled tail be shared.
    forked: bool,
}

impl BlockTable {
    /// A table starting with cached prefix blocks (all full), the first `released` of them
    /// not needed.
    pub fn from_prefix(blocks: Vec<Block>, released: usize, block_size: usize) -> Self {
        let len = (released + blocks.len()) * block_size;
        Self { blocks, released, len, forked: false }
    }

    /// The block of every position's block index; released ones repeat the first block
    /// still held (never read, but a valid block).
    pub fn ids(&self) -> Vec<BlockId> {
        let placeholder = self.blocks.first().map_or(0, Block::id);
        std::iter::repeat_n(placeholder, self.released).chain(self.blocks.iter().map(Block::id)).collect()
    }

    /// The block holding block index `index`, unless released.
    pub fn block(&self, index: usize) -> Option<&Block> {
        index.checked_sub(self.released).and_then(|i| self.blocks.get(i))
    }

    /// Blocks held.
    pub fn held(&self) -> usize {
        self.blocks.len()
    }

    /// Lets go of the blocks that hold only positions before `position` (keeping the last
    /// block, which later positions are written into).
    pub fn release_before(&mut self, position: usize, block_size: usize) {
        let gone = (position / block_size).saturating_sub(self.released).min(self.blocks.len().saturating_sub(1));
        if gone > 0 {
            self.blocks.drain(..gone);
            self.released += gone;
        }
    }

    /// Token slots in use.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Token slots of the blocks held.
    pub fn capacity(&self, block_size: usize) -> usize {
        self.blocks.len() * block_size
    }

    /// Positions covered by released blocks.
    pub fn released_len(&self, block_size: usize) -> usize {
        self.released * block_size
    }

    /// Blocks needed to grow by `n` tokens (not counting a copy-on-write).
    pub fn blocks_needed(&self, n: usize, block_size: usize) -> usize {
        (self.len + n).div_ceil(block_size).saturating_sub(self.released + self.blocks.len())
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
        let shared_tail = self.shares_tail(n, bs);
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
        while (self.released + self.blocks.len()) * bs < self.len + n {
            self.blocks.push(Block { id: pool.allocate().expect("counted as available"), pool: manager.pool.clone() });
        }
        drop(pool);
        // Swapped in after the lock is released: dropping the shared block takes it.
        let copy = private.map(|id| {
            let tail = self.len / bs - self.released;
            let old = std::mem::replace(&mut self.blocks[tail], Block { id, pool: manager.pool.clone() });
            BlockCopy { from: old.id, to: id }
        });
        self.len += n;
        Ok(copy)
    }

    /// Whether growing by `n` tokens writes into a partly filled block another sequence
    /// shares (after a fork), which then needs a private copy.
    fn shares_tail(&self, n: usize, bs: usize) -> bool {
        self.forked
            && self.len % bs != 0
            && n > 0
            && self.blocks.last().is_some_and(|b| lock(&b.pool).refcount[b.id as usize] > 1)
    }

    /// Blocks growing by `n` tokens takes, a copy-on-write included.
    pub fn blocks_to_grow(&self, n: usize, bs: usize) -> usize {
        self.blocks_needed(n, bs) + usize::from(self.shares_tail(n, bs))
    }

    /// Gives back the slots from `len` on (positions computed for draft tokens that were
    /// rejected), and the blocks that then hold none of the first `len` slots; the last
    /// block is kept, as by [`BlockTable::release_before`].
    pub fn truncate(&mut self, len: usize, block_size: usize) {
        if len >= self.len {
            return;
        }
        self.len = len;
        let keep = len.div_ceil(block_size).saturating_sub(self.released).max(1);
        self.blocks.truncate(keep);
    }

    /// A second table sharing every block (for n > 1 sampling from one prompt).
    pub fn fork(&mut self) -> Self {
        self.forked = true;
        Self { blocks: self.blocks.clone(), released: self.released, len: self.len, forked: true }
    }
}

/// The first position a query at `position` sees through a window of `window` positions.
pub fn first_visible(position: usize, window: usize) -> usize {
    (position + 1).saturating_sub(window)
}

/// Salts a prefix hash with the layer group whose blocks it names (group 0 keeps it).
pub fn group_hash(hash: u64, group: usize) -> u64 {
    hash ^ (group as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// One sequence's block tables, one per group of layers of the KV cache
/// ([`SchedulerConfig::kv_groups`](crate::SchedulerConfig::kv_groups)): all cover the same
/// positions, but a group with a sliding window lets go of the blocks that fall wholly
/// outside it.
#[derive(Debug, Default)]
pub struct SequenceBlocks {
    tables: Vec<BlockTable>,
}

impl SequenceBlocks {
    pub fn new(groups: usize) -> Self {
        Self { tables: (0..groups).map(|_| BlockTable::default()).collect() }
    }

    /// Tables starting with cached prefix blocks (see [`BlockManager::lookup_groups`]).
    pub fn from_prefix(prefix: Vec<(Vec<Block>, usize)>, block_size: usize) -> Self {
        Self { tables: prefix.into_iter().map(|(blocks, released)| BlockTable::from_prefix(blocks, released, block_size)).collect() }
    }

    pub fn tables(&self) -> &[BlockTable] {
        &self.tables
    }

    /// Every group's block ids.
    pub fn ids(&self) -> Vec<Vec<BlockId>> {
        self.tables.iter().map(BlockTable::ids).collect()
    }

    /// Token slots in use (the same in every group).
    pub fn len(&self) -> usize {
        self.tables.first().map_or(0, BlockTable::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Blocks held over all groups.
    pub fn held(&self) -> usize {
        self.tables.iter().map(BlockTable::held).sum()
    }

    /// Token slots of the blocks held, over all groups.
    pub fn capacity(&self, block_size: usize) -> usize {
        self.tables.iter().map(|t| t.capacity(block_size)).sum()
    }

    /// Positions computed and held, over all groups (what [`SequenceBlocks::capacity`] is
    /// used for).
    pub fn used(&self, computed: usize, block_size: usize) -> usize {
        self.tables.iter().map(|t| computed.saturating_sub(t.released_len(block_size))).sum()
    }

    /// Blocks needed to grow by `n` tokens, over all groups.
    pub fn blocks_needed(&self, n: usize, block_size: usize) -> usize {
        self.tables.iter().map(|t| t.blocks_needed(n, block_size)).sum()
    }

    /// Makes room in every group for positions up to `end`, whose first query runs at
    /// position `first_query`: a windowed group first lets go of the blocks no query from
    /// there on sees. All or nothing: on [`OutOfBlocks`] no table grows. Returns the copies
    /// to perform (shared partly filled blocks).
    pub fn ensure(
        &mut self,
        manager: &BlockManager,
        windows: &[Option<usize>],
        first_query: usize,
        end: usize,
    ) -> Result<Vec<BlockCopy>, OutOfBlocks> {
        let bs = manager.block_size();
        for (table, window) in self.tables.iter_mut().zip(windows) {
            if let Some(w) = window {
                table.release_before(first_visible(first_query, *w), bs);
            }
        }
        let needed: usize = self.tables.iter().map(|t| t.blocks_to_grow(end.saturating_sub(t.len()), bs)).sum();
        let available = manager.available();
        if needed > available {
            return Err(OutOfBlocks { needed, available });
        }
        let mut copies = Vec::new();
        for table in &mut self.tables {
            copies.extend(table.ensure(manager, end).expect("counted as available"));
        }
        Ok(copies)
    }

    /// [`BlockTable::truncate`] in every group.
    pub fn truncate(&mut self, len: usize, block_size: usize) {
        for table in &mut self.tables {
            table.truncate(len, block_size);
        }
    }

    /// Second tables sharing every block (for n > 1 sampling from one prompt).
    pub fn fork(&mut self) -> Self {
        Self { tables: self.tables.iter_mut().map(BlockTable::fork).collect() }
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
        assert_eq!((t.len(), t.held()), (9, 3));
        let err = t.reserve(&m, 4).unwrap_err();
        assert_eq!(err, OutOfBlocks { needed: 1, available: 0 });
        assert_eq!((t.len(), t.held()), (9, 3));
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
    fn windowed_groups_let_go_of_blocks_behind_the_window() {
        // Group 0 attends to everything, group 1 to its last 6 positions; blocks of 4.
        let m = BlockManager::new(64, 4);
        let windows = [None, Some(6)];
        let mut s = SequenceBlocks::new(2);
        s.ensure(&m, &windows, 0, 20).unwrap();
        assert_eq!((s.tables()[0].held(), s.tables()[1].held()), (5, 5));
        // The next query runs at 20 and sees 15..=20: blocks 0..3 (positions 0..12) go.
        s.ensure(&m, &windows, 20, 21).unwrap();
        assert_eq!((s.tables()[0].held(), s.tables()[1].held()), (6, 3));
        let ids = s.ids();
        assert_eq!(ids[1].len(), 6, "released positions keep their place in the table");
        assert_eq!(ids[1][..3], [ids[1][3]; 3], "released entries name a block still held");
        assert_eq!(m.in_use(), 9);
        // Decoding on: the window group holds at most ceil(6 / 4) + 1 blocks.
        for position in 21..100 {
            s.ensure(&m, &windows, position, position + 1).unwrap();
            assert!(s.tables()[1].held() <= 3, "position {position}");
        }
        assert_eq!(s.tables()[0].held(), 25);
        drop(s);
        assert_eq!(m.in_use(), 0);
        m.check_invariants();
    }

    #[test]
    fn a_prefix_hit_needs_only_the_blocks_a_window_shows() {
        let m = BlockManager::new(64, 4);
        let windows = [None, Some(6)];
        let tokens: Vec<u32> = (0..24).collect();
        let hashes = prefix_hashes(&tokens, 4, 0);
        // A finished sequence left all 6 blocks of group 0 cached, and only the last 3 of
        // the windowed group (the others were released before they were registered).
        let mut held = Vec::new();
        for (i, &h) in hashes.iter().enumerate() {
            let full = m.allocate().unwrap();
            m.register(&full, group_hash(h, 0));
            held.push(full);
            if i >= 3 {
                let windowed = m.allocate().unwrap();
                m.register(&windowed, group_hash(h, 1));
                held.push(windowed);
            }
        }
        drop(held);
        let hit = m.lookup_groups(&hashes, &windows);
        // 6 blocks: the next query at 24 sees 19..=24, in blocks 4 and 5.
        assert_eq!((hit[0].0.len(), hit[0].1), (6, 0));
        assert_eq!((hit[1].0.len(), hit[1].1), (2, 4));
        let s = SequenceBlocks::from_prefix(hit, 4);
        assert_eq!(s.len(), 24);
        drop(s);
        // Without the windowed group's block 3, a prefix of 4 blocks (next query at 16,
        // seeing 11..=16, blocks 2..4) cannot be served, but 6 still can.
        let only_full = [None];
        assert_eq!(m.lookup_groups(&hashes[..4], &only_full)[0].0.len(), 4);
        assert!(m.lookup_groups(&hashes[..4], &windows)[1].0.is_empty());
        m.check_invariants();
    }

    #[test]
    fn prefix_cache_hits_and_lru_eviction() {
        let m = BlockManager::new(3, 2);
        let tokens = [1, 2, 3, 4, 5];
        let hashes = prefix_hashes(&tokens, 2, 0);
        assert_eq!(hashes.len(), 2);
        {
            let mut t = BlockTable::default();
            t.reserve(&m, 5).unwrap();
            for (block, h) in (0..).map_while(|i| t.block(i)).zip(&hashes) {
                m.register(block, *h);
            }
        }
        assert_eq!((m.in_use(), m.available()), (0, 3));
        let hit = m.lookup_groups(&hashes, &[None]);
        assert_eq!((hit[0].0.len(), hit[0].1), (2, 0));
        assert_eq!(m.stats().hit_blocks, 2);
        drop(hit);
        // A different first block shares nothing, even with the same second block.
        assert!(m.lookup_groups(&prefix_hashes(&[9, 9, 3, 4], 2, 0), &[None])[0].0.is_empty());
        // Exhausting the pool evicts the least recently used cached block first.
        let held: Vec<_> = (0..3).map(|_| m.allocate().unwrap()).collect();
        assert_eq!(m.stats().evictions, 2);
        assert!(m.lookup_groups(&hashes, &[None])[0].0.is_empty());
        drop(held);
        m.check_invariants();
    }
}
