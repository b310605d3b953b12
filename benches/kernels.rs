//! The WGSL kernels on this machine's adapter, at the default model's shapes: the quantized
//! matrix kernel (the subgroup one where the adapter has subgroups) at 1 to 64 tokens, and
//! the fused RMSNorm. One token reads each weight once, so it is reported in weight bytes
//! per second; more tokens reuse each weight, so they are reported in FLOP/s (criterion's
//! "elem/s": 2 x rows x cols x tokens per run). Next to them, the adapter's limit for a
//! kernel that streams memory: `stream` reads and writes a 64 MiB tensor (bytes moved per
//! second), the most a memory-bound kernel can reach on this adapter.
//!
//! `cargo bench --workspace --bench kernels --profile dev` (the dev profile already
//! optimises dependencies; the kernels' time is spent on the device, and sharing the profile
//! and the workspace's features avoids a second build of Burn).

use burn::tensor::{Device, Distribution, Tensor, TensorData};
use cinder_gguf::GgmlType;
use cinder_model::fused::rms_norm;
use cinder_model::quant::{QuantFormat, QuantMatrix};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

fn matrix(device: &Device, ty: GgmlType, rows: usize, cols: usize) -> QuantMatrix {
    let values: Vec<f32> = (0..rows * cols).map(|i| ((i * 7919) % 2001) as f32 / 1000.0 - 1.0).collect();
    let blocks = cinder_gguf::quantize(ty, &values).unwrap();
    QuantMatrix::upload(device, QuantFormat::of(ty).unwrap(), &blocks, rows, cols).unwrap()
}

fn sync(device: &Device) {
    device.sync().expect("device works");
}

fn benches(c: &mut Criterion) {
    let device = cinder_model::wgpu_device().expect("a wgpu adapter");
    eprintln!("adapter: {}", cinder_model::adapter_name(&device));
    // (name, format, rows = outputs, cols = inputs) of SmolLM2-135M's matrices.
    let shapes = [
        ("ffn_up", GgmlType::Q4_1, 1536, 576),
        ("ffn_down", GgmlType::Q4_1, 576, 1536),
        ("lm_head", GgmlType::Q8_0, 49152, 576),
        // The same shapes in the formats of a Q4_K_M file.
        ("ffn_up", GgmlType::Q5_0, 1536, 576),
        ("ffn_down", GgmlType::Q4K, 576, 1536),
        ("ffn_down", GgmlType::Q6K, 576, 1536),
    ];
    let mut group = c.benchmark_group("matmul_quant");
    group.sample_size(10);
    for (name, ty, rows, cols) in shapes {
        let m = matrix(&device, ty, rows, cols);
        for tokens in [1, 4, 8, 16, 64] {
            group.throughput(match tokens {
                1 => Throughput::Bytes(m.device_bytes() as u64),
                _ => Throughput::Elements((2 * rows * cols * tokens) as u64),
            });
            let x = Tensor::<2>::random([tokens, cols], Distribution::Default, &device);
            // Reading the result surfaces a kernel that failed to compile or run; a sync alone
            // would time nothing.
            m.forward(x.clone()).try_into_vec_as::<f32>().expect("the kernel runs");
            group.bench_with_input(BenchmarkId::new(format!("{name} {ty:?} {rows}x{cols}"), tokens), &x, |b, x| {
                b.iter(|| {
                    let y = m.forward(x.clone());
                    sync(&device);
                    y
                })
            });
        }
    }
    group.finish();

    let mut group = c.benchmark_group("limits");
    group.sample_size(10);
    let values = 16 << 20;
    let x = Tensor::<1>::random([values], Distribution::Default, &device);
    group.throughput(Throughput::Bytes((2 * 4 * values) as u64));
    group.bench_function("stream 64 MiB", |b| {
        b.iter(|| {
            let y = x.clone().add_scalar(1.0);
            sync(&device);
            y
        })
    });
    group.finish();

    let mut group = c.benchmark_group("rms_norm");
    for tokens in [1, 64] {
        let x = Tensor::<2>::random([tokens, 576], Distribution::Default, &device);
        let w = Tensor::<2>::from_data(TensorData::new(vec![1.0f32; 576], [1, 576]), &device);
        group.throughput(Throughput::Bytes((tokens * 576 * 8) as u64));
        group.bench_with_input(BenchmarkId::from_parameter(tokens), &x, |b, x| {
            b.iter(|| {
                let y = rms_norm(x.clone(), &w, 1e-5);
                sync(&device);
                y
            })
        });
    }
    group.finish();
}

criterion_group!(kernels, benches);
criterion_main!(kernels);
