// Copies whole KV blocks (copy-on-write of a shared block): pairs holds (source, destination)
// block ids. A block is whole rows whatever their type: its keys and values are copied as
// words.

struct Info {
    pairs: u32,
    // Words per block of keys, and of values.
    key_words: u32,
    value_words: u32,
}

@group(0) @binding(0) var<storage, read_write> pairs: array<vec2<u32>>;
@group(0) @binding(1) var<storage, read_write> k_cache: array<u32>;
@group(0) @binding(2) var<storage, read_write> v_cache: array<u32>;
@group(0) @binding(3) var<uniform> info: Info;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    for (var e = gid.x; e < info.pairs * info.key_words; e += groups.x * 64u) {
        let pair = pairs[e / info.key_words];
        let i = e % info.key_words;
        k_cache[pair.y * info.key_words + i] = k_cache[pair.x * info.key_words + i];
    }
    for (var e = gid.x; e < info.pairs * info.value_words; e += groups.x * 64u) {
        let pair = pairs[e / info.value_words];
        let i = e % info.value_words;
        v_cache[pair.y * info.value_words + i] = v_cache[pair.x * info.value_words + i];
    }
}
