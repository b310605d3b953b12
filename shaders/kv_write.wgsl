// Writes a batch's new keys and values ([rows, kv_dim] each) into their cache slots, read
// from the batch buffer from word `slots` (the slots of this layer's group), encoded as the
// cache's types (the KV code of paged.rs: one invocation per store unit of a row).

struct Info {
    rows: u32,
    kv_dim: u32,
    slots: u32,
}

@group(0) @binding(0) var<storage, read_write> k: array<f32>;
@group(0) @binding(1) var<storage, read_write> v: array<f32>;
@group(0) @binding(2) var<storage, read_write> batch: array<u32>;
@group(0) @binding(5) var<uniform> info: Info;

{{KV}}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let key_units = key_units();
    for (var e = gid.x; e < info.rows * key_units; e += groups.x * 64u) {
        let row = e / key_units;
        store_key(batch[info.slots + row], row * info.kv_dim, e % key_units);
    }
    let value_units = value_units();
    for (var e = gid.x; e < info.rows * value_units; e += groups.x * 64u) {
        let row = e / value_units;
        store_value(batch[info.slots + row], row * info.kv_dim, e % value_units);
    }
}
