//! Stable hashes of event ids and names: the same on every run, machine and
//! version (unlike the standard library's hasher), so that what is chosen by
//! hash (the events a model scores, a window's sample, a key's random
//! stream) is chosen again in every replay and after every restart.

/// FNV-1a (Fowler, Noll & Vo) of `b`.
pub fn fnv1a(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| {
        (h ^ u64::from(x)).wrapping_mul(0x100_0000_01b3)
    })
}

/// SplitMix64's finaliser (Steele, Lea & Flood, OOPSLA 2014): spreads
/// FNV's clustered bits over the whole range (ids that differ in their last
/// digit hash far apart).
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Where the id `id` falls in the hash range, for seed `seed`: uniform over
/// `u64` for distinct ids. Seed 0 orders ids as `model.sample` picks them,
/// so a window's sample takes the scored events first.
pub fn id_hash(id: &[u8], seed: u64) -> u64 {
    mix(fnv1a(id) ^ seed)
}
